"""Training: one generic loop (:mod:`.loop`), DDP helpers (:mod:`.dist`), per-model tasks (:mod:`.tasks`).

A *task* says what differs per model (build the net, batch → loss, validation → metrics);
:class:`acdctool.train.loop.Trainer` does the rest (device, AMP, DDP, resume, checkpoints,
metrics CSV, SIGTERM). See :class:`acdctool.train.loop.Task` for the interface.
"""
