"""The local runner: Beam's FnApiRunner, with only the stages that call a service spread over its workers.

The FnApiRunner runs each stage one after another and, with several workers, deals every stage's input
out to all of them (``ParallelBundleManager``): one bundle per worker, empty or not, and each worker first
builds the stage's bundle processor (Beam inspects every DoFn's signature there; timed in a 2,000-image
import at 300 ms: 0.06 s for the first stage alone, 0.25-0.54 s each when 16 build at once under one
GIL). For the stages that wait on Roboflow or Supabase that is the price of waiting in parallel; for the
rest (the listing's dedup, counts and completeness check, the shard grouping's write, the dead letters)
it is pure cost, as their work is Python under one GIL.
Stage traces of 5,000-image imports at 100 and 300 ms: the completeness check took 0.22-0.30 s on 16
workers and 0.01 s on one, the dedup 0.35-0.44 s and 0.15-0.18 s, the dead letters 0.25 s and 0.02 s;
the details' stage began 4.9-5.2 s after the command's start, against 6.1 s (300 ms, one run), and 4.5 s
with the split below.

    pipeline = beam.Pipeline(runner=LocalRunner(("ListImages/ReadPages", "FetchDetails")), options=...)

A stage is spread when one of its transforms' names starts with one of ``spread_steps``, except a
splittable DoFn's pairing and splitting of its input (``.../PairWithRestriction``,
``.../SplitAndSizeRestriction``), which the runner fuses with that input: the listing's is one element
from an ``Impulse``, and spread it cost the run's first stage 0.72-0.77 s (0.7 s of it the 16 bundle
processors) for work one worker does in a few milliseconds. The others run on one worker. Used for one
process of threads only (``pipeline/main.py``): with ``multi_processing`` it is not measured enough (one
matrix run of four processes went worse with it, not understood). ``direct_num_workers`` and
``direct_running_mode`` are read from the options as by the FnApiRunner itself. Beam's
``_get_bundle_manager`` is the seam (Beam 2.77.x, as setup.py requires): it already runs stateful stages
on one worker, for a reason of its own.
"""

from __future__ import annotations

from apache_beam.runners.portability.fn_api_runner.fn_runner import BundleManager, FnApiRunner

# The parts of a splittable DoFn's expansion that run where its input is, not where its restrictions go.
SDF_INPUT_STEPS = ("/PairWithRestriction", "/SplitAndSizeRestriction")


class LocalRunner(FnApiRunner):
    def __init__(self, spread_steps: tuple[str, ...]):
        super().__init__()
        self.spread_steps = spread_steps

    def spreads(self, transform_names: list[str]) -> bool:
        return any(name.startswith(self.spread_steps) and not name.endswith(SDF_INPUT_STEPS)
                   for name in transform_names)

    def _get_bundle_manager(self, bundle_context_manager):
        if self.spreads([transform.unique_name for transform in bundle_context_manager.stage.transforms]):
            return super()._get_bundle_manager(bundle_context_manager)
        return BundleManager(bundle_context_manager, self._progress_frequency,
                             cache_token_generator=FnApiRunner.get_cache_token_generator(static=False))
