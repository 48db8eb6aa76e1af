"""Packaging for the Roboflow -> Supabase Beam importer.

Dataflow workers install the product through this file (``--setup_file ./setup.py``),
so the runtime dependencies are declared here and the SQL migrations ship as package data.
"""

import setuptools

setuptools.setup(
    name="roboflow-supabase-import",
    version="0.1.0",
    description="Stream a Roboflow project into Supabase Storage and Postgres with Apache Beam.",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["pipeline", "pipeline.*", "transforms", "transforms.*"]),
    package_data={"pipeline": ["migrations/*.sql"]},
    # The demo's local Supabase stand-in signs its JWTs with PyJWT; workers do not need it.
    extras_require={"demo": ["PyJWT>=2.8"]},
    install_requires=[
        "apache-beam[gcp]>=2.77.0,<2.78",
        "supabase>=2.34,<2.35",
        "requests>=2.31",
        "pyarrow",
        "httpx>=0.28,<0.29",
        "pillow>=10",
        "pyyaml>=6",
    ],
)
