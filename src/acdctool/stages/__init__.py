"""One module per command: ``acdctool X`` runs :func:`acdctool.stages.X.run` (``-`` becomes ``_``).

Every stage has the same contract::

    run(config, inputs, output, *, force=False, progress=None) -> Result

- ``config``: the stage's frozen dataclass from :mod:`acdctool.config` (every default lives
  there; the resolved config is stored in the output);
- ``inputs``: the module's ``Inputs`` dataclass: the files it reads and the ``provenance``
  record stored in its output (the CLI builds it from the command line; None: made without one);
  ``synth`` reads nothing and takes None;
- ``output``: the file or folder to write (atomically through :mod:`acdctool.io.atomic`, given
  every input path so that it can never delete or replace one; ``info`` writes nothing and
  takes None);
- ``force``: replace an existing output;
- ``progress``: a :data:`acdctool.progress.Progress` callback (:mod:`acdctool.progress`);
- returns the module's ``Result`` dataclass. Training stages also take ``resume`` and
  ``should_stop`` (keyword-only).

Stages import the library (``io/``, ``data/``, ``models/``, ``train/``, ``metrics/``,
``report/``), never the reverse; nothing here prints, exits or reads ``sys.argv`` (that is
:mod:`acdctool.cli`'s job). Modules starting with ``_`` are helpers shared by stages.
"""
