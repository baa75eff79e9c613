"""The built-in demo data: the synthetic corpus and its fbank feature cache, made once and reused.

`ensure_demo_data()` is what every command without `--manifest/--cache` falls back to, so the
sweep, the ablation and the tests all run end to end on a laptop with nothing downloaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_ROOT = Path("data/demo")


@dataclass(frozen=True)
class DemoData:
    """Where the demo manifest (with folds.json beside it) and its fbank cache live."""

    manifest_dir: Path
    cache: Path


def ensure_demo_data(
    root: str | Path = DEFAULT_ROOT, seed: int = 0, clips_per_speaker: int = 80, progress: bool = True
) -> DemoData:
    """Generate the demo corpus and cache its fbank features unless they already exist with these options."""
    from tfmamba.corpora.demo import generate_demo
    from tfmamba.corpora.manifest import manifest_hash
    from tfmamba.corpora.prepare import prepare_corpus
    from tfmamba.features.build import build_cache
    from tfmamba.features.factory import get_extractor
    from tfmamba.process_lock import acquire

    root = Path(root).resolve()
    corpus_dir, cache = root / "corpus", root / "fbank"
    options = {"seed": seed, "clips_per_speaker": clips_per_speaker}
    build = partial(generate_demo, corpus_dir, seed=seed, clips_per_speaker=clips_per_speaker)
    # Two commands started at once on a fresh folder (`make demo` in two terminals, a sweep and the Table III demo):
    # the second waits for the first's preparation, then finds it done, instead of failing on its cache's lock.
    with acquire(str(root), "demo", wait="which is preparing the demo data"):
        prepared = prepare_corpus("demo", build, corpus_dir, options)
        # build_cache resumes: utterances already in the cache are skipped, so this is cheap once done.
        report = build_cache(prepared.manifest.table, manifest_hash(prepared.manifest), get_extractor("fbank"),
                             str(cache), progress=progress)
    logger.info("demo data ready: manifest %s, cache %s (%s)", corpus_dir, cache, report.summary().splitlines()[0])
    return DemoData(corpus_dir, cache)
