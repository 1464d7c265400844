"""Training engine: the machinery every method and task shares, on Lightning.

- :mod:`slidr.engine.data`: deterministic data order and augmentations (:class:`EpochSampler`,
  :class:`SeededDataset`, :func:`replayable_loader`), evaluation shards (:class:`ShardSampler`,
  :func:`evaluation_loader`), seeds (:func:`derive_seed`).
- :mod:`slidr.engine.optim`: the optimizer registry :data:`OPTIMIZERS`, :func:`build_optimizer`, the cosine
  schedule and :func:`configure_optimization` (what a module's ``configure_optimizers`` returns).
- :mod:`slidr.engine.distributed`: DDP helpers (:func:`is_distributed`, :func:`gather_with_grad`,
  :func:`gathered_info_nce`).
- :mod:`slidr.engine.checkpoint`: atomic epoch checkpoints, the run folder, exported files
  (:func:`export_pretrained`, :func:`load_export`, :func:`load_backbone`).
- :mod:`slidr.engine.module`: :class:`PretrainModule`, the base LightningModule of pretraining methods.
- :mod:`slidr.engine.record`: the record of a pretraining run (loss history, summary, loss curve).
- :mod:`slidr.engine.trainer`: run start (:func:`start_run`), the Lightning trainer factories and
  :func:`fit_pretraining`.

Layer: above ``slidr.models`` and below ``slidr.methods`` (methods are small modules on top of this machinery).
This package's ``__init__`` imports nothing, so that checking an optimizer name in a config does not load
Lightning.
"""
