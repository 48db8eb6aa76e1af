"""What each emulated Roboflow route answers, as plain Response objects; the HTTP plumbing is in server.py.

Read it by question:
- which URL reaches which handler: routes.py (`RoboflowApi.answer`);
- how Roboflow answers on the wire (JSON envelope, error bodies, HTML and XML errors): wire.py;
- the workspace, project and version objects, and the export route: projects.py (+ export_jobs.py);
- image listings (`/search`, `/search/v1`): search.py, their request bodies: queries.py;
- one image's details: image_details.py; the CDN's image files: cdn.py;
- what every handler shares (settings, dataset, CDN urls, embeddings): context.py.
"""
