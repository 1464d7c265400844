"""Methods: what is trained, on top of the engine (:mod:`slidr.engine`).

Pretraining methods are registered by name in :data:`METHODS` (the config's ``method``): each is a subclass of
:class:`slidr.engine.module.PretrainModule` providing its loss and its training data, built as
``cls(cfg, **kwargs)``. Adding a method is one new module in this package::

    from slidr.engine.module import PretrainModule
    from slidr.methods import METHODS

    @METHODS.register("mymethod")
    class MyMethodModule(PretrainModule):
        def build_train_dataset(self): ...
        def compute_loss(self, batch): ...

Every public module of this package is imported on the first lookup of a method name, so nothing else needs to
list it. Runners: :func:`slidr.methods.pretrain.run_pretraining` (any registered method) and
:func:`slidr.methods.downstream.run_downstream` (linear probing, fine-tuning).
"""

from __future__ import annotations

from typing import Any

from slidr.registry import Registry

METHODS: Registry[Any] = Registry("method", home="slidr.methods")
