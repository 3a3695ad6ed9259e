"""Sweeps of schedulers x NFE x guidance with a Frechet-distance metric: ``fastsample sweep CONFIG``.

A sweep config (TOML, or YAML when PyYAML is installed) names a model, a feature network with its
reference statistics, a list of schedulers (ours and Diffusers' by name, with config overrides),
NFE values, guidance scales and the sample count. Generated batches stream straight into float64
feature sums (``fastsample.fid.FeatureStatistics``); nothing but the sums is kept.

Guarantees:
- Per-sample seeds: sample i's starting noise comes from its own generator, so an image does not
  depend on batch size or process count, and every cell sees the same noises (common random
  numbers make scheduler comparisons less noisy).
- The whole config is checked before any sample is drawn: unknown keys at every level and in each
  scheduler's ``config`` (with the nearest known key), value types, classes, files, and every
  scheduler x NFE's ``set_timesteps``. Paths are relative to the config file.
- Each finished cell is written atomically under ``OUTPUT/cells/`` and reused on rerun. A cell's
  key holds content hashes (SHA-256) of everything its value depends on: model weights and config,
  schedule and statistics files, reference statistics, feature-network weights, the scheduler
  config after defaults, the library versions. A cell whose stored key differs from the expected
  one (edited inputs, a copied or foreign file) or that is malformed is recomputed, with a message.
  An interrupted sweep resumes where it stopped; a lock makes a second sweep into the same folder
  wait, then reuse the first one's cells.
- Multi-process through ``accelerate launch``: ranks take disjoint sample indices and the sums
  are all-reduced, giving the statistics of a single process to float64 round-off.
- Results: ``results.json``, ``results.csv``, ``results.md``, one ``<metric>_vs_nfe.png`` per metric
  (the train/held-out floor drawn on the FD plot) and per NFE a sample sheet ``samples_nfe<N>.png``
  (same seeds across schedulers), each written atomically; a progress bar runs inside each cell.
  ``[metric] metrics = ["fd", "kid", "prdc", "fd_dinov2", "cmmd"]`` adds metrics, with the encoders
  named by ``dinov2`` / ``clip`` (``download = true`` fetches them); see :mod:`.metrics`.
- ``[sweep] threads = N`` runs the sweep on N torch intra-op threads (default: torch's own, one per core). On a
  loaded machine fewer threads than cores avoids OpenMP threads spin-waiting for a busy core, many times slower.
  Results agree across thread counts to float32 round-off (the UNet's outputs differ in their last bits), so the
  count is not part of a cell's key; each computed cell records its ``threads`` beside its ``seconds``.
- ``[sweep] save_images = true`` (``OUTPUT/images``) or a folder keeps every cell's images as PNG files,
  resumably; a folder holding other files is refused without ``--force`` (see :mod:`.images`).

This package is evaluation code: it imports the library, and the library never imports it.

Modules: :mod:`.config` (the config file), :mod:`.sources` (models and features), :mod:`.runner` (cells,
results), :mod:`.metrics` (metrics and their encoders), :mod:`.images` (saved images), :mod:`.report`
(floor, plots, sample sheets), :mod:`.cli` (the command).
"""

from .config import ConfigError, SweepConfig, load_config
from .runner import run_sweep

__all__ = ["ConfigError", "SweepConfig", "load_config", "run_sweep"]
