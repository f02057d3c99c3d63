"""The HDF5 slice dataset: the one format every stage reads and writes (``docs/FORMAT.md``).

A file holds N rows, one per 2D short-axis slice (or per slice × model for segmentation
outputs), all of the same in-plane size H×W:

- ``/image`` float32 (N, H, W), intensities normalised to [0, 1];
- ``/gt`` uint8 (N, H, W), ground-truth labels 0..3, when known;
- ``/pred`` uint8 (N, H, W), a stage's predicted labels (gen-seg, refine);
- any further per-row array a stage adds (e.g. ``/probs``, ``/context``), first axis N;
- ``/index/<column>``: one 1-D dataset per column of :data:`INDEX_COLUMNS`.

Root attributes: ``format`` (always :data:`FORMAT`), ``kind`` (which stage wrote it),
``schema_version``, ``tool_version``, ``config`` and ``provenance`` (JSON strings).
Arrays are chunked one row per chunk, gzip + shuffle, so random row access stays cheap.

Damaged files fail with one-line errors (:class:`~acdctool.errors.BadInputError`) naming the file
(and the row, for a corrupt chunk or a bad value): malformed attributes, an unreadable index
or array, labels outside 0..3 and NaN/inf images (:meth:`SliceFile.check_values`).
:class:`SliceWriter` builds the file in memory and writes it with plain file I/O at the end,
so a full disk is a clean :class:`~acdctool.errors.OutputError` (HDF5 itself crashes on one).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, cast

import h5py
import numpy as np
import pandas as pd

from acdctool import __version__
from acdctool.conventions import VOLUME_KEY
from acdctool.errors import BadInputError, FileKindError, InputMissingError, SchemaVersionError
from acdctool.io.atomic import atomic_path, write_bytes

FORMAT = "acdctool-slices"
SCHEMA_VERSION = 1
KINDS = ("prep", "seg", "3gram", "refined")
"""``prep``: images + ground truth; ``seg``: gen-seg predictions; ``3gram``: seg plus
neighbour context; ``refined``: refine output."""

_STR = "str"
INDEX_COLUMNS: dict[str, str] = {
    "patient": _STR,  # e.g. "patient001"
    "group": _STR,  # NOR, MINF, DCM, HCM, RV ("" when unknown)
    "phase": _STR,  # ED or ES
    "frame": "int16",  # 1-based frame number in the cine
    "slice": "int16",  # 0-based position in its volume (file order, base first in ACDC)
    "n_slices": "int16",  # slice count of its volume
    "spacing_row": "float32",  # mm per output pixel along rows, after crop and resize
    "spacing_col": "float32",  # mm per output pixel along columns, after crop and resize
    "thickness": "float32",  # slice spacing in mm (pixdim[3])
    "crop_r0": "int32",  # crop box in original pixels: rows [r0, r0+crop_size) ...
    "crop_c0": "int32",  # ... and columns [c0, c0+crop_size); may extend past the image
    "crop_size": "int32",  # side of the square crop box in original pixels
    "orig_rows": "int32",  # original in-plane shape of the volume
    "orig_cols": "int32",
    "split": _STR,  # train, val or test
    "fold": "int8",  # 0..k-1 for training patients, -1 otherwise
    "model": _STR,  # model name for seg/refined rows, "" for prep rows
}
_COMPRESSION = {"compression": "gzip", "compression_opts": 4, "shuffle": True}


class SliceWriter:
    """Stream rows into a new slice file; the file appears only when the writer closes cleanly.

    Args:
        path: output ``.h5`` path.
        kind: one of :data:`KINDS`.
        config: the stage's resolved config (stored as JSON).
        provenance: see :func:`acdctool.provenance.make_provenance`.
        shape: in-plane (H, W) of every row, px.
        arrays: name -> (dtype, extra trailing shape); e.g. ``{"image": ("float32", ()),
            "gt": ("uint8", ()), "probs": ("float16", (4,))}``. Extra shape goes *before* H, W.
        force: replace an existing output.
        attrs: further root attributes (JSON-serialised when not scalar).
        columns: extra index columns a stage adds (name -> dtype, ``"str"`` for text), after
            :data:`INDEX_COLUMNS`; readers keep them, older readers ignore them.

    Raises:
        OutputError: the output exists (without ``force``) or cannot be written.

    Example:
        >>> with SliceWriter(out, kind="prep", config={}, provenance={}, shape=(128, 128),
        ...                  arrays={"image": ("float32", ())}) as w:  # doctest: +SKIP
        ...     w.append(index_rows, image=images)            # images: (n, 128, 128)
    """

    def __init__(
        self,
        path: Path,
        *,
        kind: str,
        config: Mapping[str, Any],
        provenance: Mapping[str, Any],
        shape: tuple[int, int],
        arrays: Mapping[str, tuple[str, tuple[int, ...]]],
        force: bool = False,
        attrs: Mapping[str, Any] | None = None,
        columns: Mapping[str, str] | None = None,
        inputs: Sequence[Path | str | None] = (),
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        self.path = Path(path)
        self._kind, self._config, self._provenance = kind, dict(config), dict(provenance)
        self._shape, self._specs, self._attrs = tuple(shape), dict(arrays), dict(attrs or {})
        self._force, self._inputs = force, tuple(inputs)
        self._columns = {**INDEX_COLUMNS, **(columns or {})}
        self._rows: dict[str, list[Any]] = {c: [] for c in self._columns}
        self._n = 0
        self._ctx: AbstractContextManager[Path] | None = None
        self._tmp = self.path
        self._h5: h5py.File | None = None

    def __enter__(self) -> SliceWriter:
        ctx = self._ctx = atomic_path(self.path, self._force, self._inputs)
        self._tmp = ctx.__enter__()
        # In memory; the bytes go to the temp file at the end (see the module docstring).
        self._h5 = h5py.File(self._tmp, "w", driver="core", backing_store=False, block_size=1 << 22)
        for name, (dtype, extra) in self._specs.items():
            full = (*extra, *self._shape)
            self._h5.create_dataset(
                name,
                shape=(0, *full),
                maxshape=(None, *full),
                dtype=dtype,
                chunks=(1, *full),
                **_COMPRESSION,
            )
        return self

    def append(self, rows: Sequence[Mapping[str, Any]] | pd.DataFrame, **arrays: np.ndarray) -> None:
        """Append n rows: their index entries and one (n, ...) array per declared name."""
        assert self._h5 is not None, "use SliceWriter as a context manager"
        records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
        n = len(records)
        if set(arrays) != set(self._specs):
            raise ValueError(f"append needs arrays {sorted(self._specs)}, got {sorted(arrays)}")
        for name, values in arrays.items():
            ds = self._h5[name]
            if values.shape != (n, *ds.shape[1:]):
                raise ValueError(f"{name}: shape {values.shape}, expected {(n, *ds.shape[1:])}")
            ds.resize(self._n + n, axis=0)
            ds[self._n :] = values
        for rec in records:
            for col in self._columns:
                self._rows[col].append(rec[col])
        self._n += n

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._h5 is not None and self._ctx is not None
        try:
            try:
                if exc_type is None:
                    self._finish()
                    self._h5.flush()
                    image = self._h5.id.get_file_image()
            finally:
                self._h5.close()
            if exc_type is None:
                write_bytes(self._tmp, image)
                del image
        except BaseException as error:
            if not self._ctx.__exit__(type(error), error, error.__traceback__):
                raise
            return
        self._ctx.__exit__(exc_type, exc, tb)

    def _finish(self) -> None:
        h5 = self._h5
        assert h5 is not None
        idx = h5.create_group("index")
        for col, kind in self._columns.items():
            values = self._rows[col]
            if kind == _STR:
                idx.create_dataset(col, data=np.array(values, dtype=object), dtype=h5py.string_dtype())
            else:
                idx.create_dataset(col, data=np.asarray(values, dtype=kind))
        h5.attrs["format"] = FORMAT
        h5.attrs["kind"] = self._kind
        h5.attrs["schema_version"] = SCHEMA_VERSION
        h5.attrs["tool_version"] = __version__
        h5.attrs["config"] = json.dumps(self._config, sort_keys=True, default=str)
        h5.attrs["provenance"] = json.dumps(self._provenance, sort_keys=True, default=str)
        for key, value in self._attrs.items():
            h5.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)


class SliceFile:
    """Read-only access to a slice file, validated on open.

    Arrays are read lazily (``read(name, rows)``), so opening a large file is cheap; open one
    ``SliceFile`` per DataLoader worker rather than sharing a handle across processes.

    Args:
        path: the ``.h5`` file.
        kinds: accepted kinds (default: any of :data:`KINDS`).

    Raises:
        InputMissingError: the file does not exist.
        FileKindError: not an HDF5 file, not a slice file, or a kind not in ``kinds``.
        SchemaVersionError: written with a schema version this tool does not read.
        BadInputError: the index is incomplete or inconsistent with the arrays.

    Example:
        >>> with SliceFile("slices.h5") as f:  # doctest: +SKIP
        ...     f.index.groupby("split").patient.nunique()
        ...     img = f.read("image", [0, 5])   # (2, 128, 128) float32
    """

    def __init__(self, path: Path | str, kinds: Iterable[str] | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputMissingError(f"{self.path}: no such file")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError:
            raise FileKindError(f"{self.path}: not an HDF5 file (truncated or another format?)") from None
        try:
            self._validate(kinds)
        except Exception:
            self._h5.close()
            raise
        self._index: pd.DataFrame | None = None

    def _validate(self, kinds: Iterable[str] | None) -> None:
        try:
            attrs = dict(self._h5.attrs)
        except (OSError, RuntimeError, KeyError, ValueError, TypeError):
            raise BadInputError(f"{self.path}: unreadable attributes (damaged file?)") from None
        if attrs.get("format") != FORMAT:
            raise FileKindError(f"{self.path}: not an acdctool slice file (made by `acdctool prep` and later stages)")
        try:
            version = int(attrs.get("schema_version", -1))
        except (TypeError, ValueError):
            raise BadInputError(
                f"{self.path}: malformed 'schema_version' attribute {attrs.get('schema_version')!r}"
            ) from None
        if version != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path}: schema version {version}, this acdctool {__version__} reads version "
                f"{SCHEMA_VERSION}; re-run the stage that made it with this version"
            )
        kinds = tuple(kinds) if kinds is not None else KINDS
        if self.kind not in kinds:
            raise FileKindError(f"{self.path}: a '{self.kind}' file, expected {' or '.join(repr(k) for k in kinds)}")
        for key in ("config", "provenance"):
            raw = attrs.get(key, "{}")
            try:
                ok = isinstance(json.loads(raw), dict)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise BadInputError(f"{self.path}: malformed '{key}' attribute (not a JSON object)")
        try:
            self._check_layout()
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise BadInputError(f"{self.path}: damaged slice file ({_first_line(exc)})") from None

    def _check_layout(self) -> None:
        h5 = self._h5
        if not isinstance(h5.get("index"), h5py.Group) or not isinstance(h5.get("image"), h5py.Dataset):
            raise BadInputError(f"{self.path}: incomplete slice file (no index or image array)")
        missing = [c for c in INDEX_COLUMNS if not isinstance(h5["index"].get(c), h5py.Dataset)]
        if missing:
            raise BadInputError(f"{self.path}: index lacks columns {', '.join(missing)}")
        n = len(self)
        for col in h5["index"]:
            ds = h5["index"][col]
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.shape[0] != n:
                raise BadInputError(f"{self.path}: index column '{col}' is not one value per row ({n} rows)")
        for name in self.arrays:
            ds = h5[name]
            if ds.shape[0] != n:
                raise BadInputError(f"{self.path}: array '{name}' has {ds.shape[0]} rows, index has {n}")
            if ds.ndim < 3 or ds.shape[-2:] != h5["image"].shape[-2:]:
                raise BadInputError(
                    f"{self.path}: array '{name}' has shape {ds.shape}; expected rows of {h5['image'].shape[-2:]}"
                )

    def __enter__(self) -> SliceFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._h5.close()

    def __len__(self) -> int:
        return int(self._h5["index/patient"].shape[0])

    @property
    def kind(self) -> str:
        return str(self._h5.attrs.get("kind", ""))

    @property
    def shape(self) -> tuple[int, int]:
        """In-plane (H, W) of every row, px."""
        rows, cols = self._h5["image"].shape[-2:]
        return int(rows), int(cols)

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self._h5.attrs.items()}

    @property
    def tool_version(self) -> str:
        return str(self._h5.attrs.get("tool_version", "?"))

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self._h5.attrs.get("config", "{}"))  # checked to be a JSON object on open

    @property
    def provenance(self) -> dict[str, Any]:
        return json.loads(self._h5.attrs.get("provenance", "{}"))

    @property
    def arrays(self) -> list[str]:
        """Names of the per-row arrays (``image``, ``gt``, ``pred``, ...)."""
        return sorted(k for k, v in self._h5.items() if isinstance(v, h5py.Dataset))

    def has(self, name: str) -> bool:
        return name in self.arrays

    @property
    def index(self) -> pd.DataFrame:
        """The per-row index: the :data:`INDEX_COLUMNS`, then any stage-specific columns (cached)."""
        if self._index is None:
            grp = self._h5["index"]
            extra = sorted(c for c in grp if c not in INDEX_COLUMNS)
            data = {}
            for col in [*INDEX_COLUMNS, *extra]:
                ds = grp[col]
                want_text = INDEX_COLUMNS.get(col) == _STR
                is_text = h5py.check_string_dtype(ds.dtype) is not None
                if col in INDEX_COLUMNS and want_text != is_text:
                    kind = "text" if want_text else "numbers"
                    raise BadInputError(f"{self.path}: index column '{col}' should hold {kind} ({ds.dtype})")
                try:
                    data[col] = ds.asstr()[:] if is_text else ds[:]
                except (OSError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
                    raise BadInputError(
                        f"{self.path}: index column '{col}' is unreadable ({_first_line(exc)})"
                    ) from None
            self._index = pd.DataFrame(data)
        return self._index

    def dataset(self, name: str) -> h5py.Dataset:
        """The raw h5py dataset ``name`` (lazy).

        Raises:
            BadInputError: the file has no such array.
        """
        if name not in self.arrays:
            raise BadInputError(f"{self.path}: no '{name}' array (has {', '.join(self.arrays)})")
        return self._h5[name]

    def read(self, name: str, rows: Sequence[int] | np.ndarray | slice | None = None) -> np.ndarray:
        """Read array ``name`` for ``rows`` (all rows by default), in the given row order."""
        ds = self.dataset(name)
        if rows is None:
            return self._read(ds, slice(None))
        if isinstance(rows, slice):
            return self._read(ds, rows)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.empty((0, *ds.shape[1:]), dtype=ds.dtype)
        # h5py fancy indexing needs increasing unique indices: read sorted, then reorder.
        uniq, inverse = np.unique(rows, return_inverse=True)
        return self._read(ds, uniq)[inverse]

    def _read(self, ds: h5py.Dataset, selection: slice | np.ndarray) -> np.ndarray:
        """``ds[selection]``; a corrupt chunk is a :class:`BadInputError` naming the first bad row."""
        try:
            return ds[selection]
        except (OSError, RuntimeError, ValueError) as exc:
            rows = np.arange(ds.shape[0])[selection]
            bad = next((int(r) for r in rows if not _readable(ds, int(r))), None)
            where = f" at row {bad}{self._describe(bad)}" if bad is not None else ""
            raise BadInputError(
                f"{self.path}: array '{ds.name.lstrip('/')}' is corrupt{where} ({_first_line(exc)}); "
                "re-run the stage that made it"
            ) from None

    def _describe(self, row: int) -> str:
        try:
            r = self.index.iloc[row]
            return f" ({r.patient} {r.phase} slice {r.slice})"
        except Exception:  # noqa: BLE001 - only decorates a message; the index may be the damaged part
            return ""

    def check_values(
        self, name: str, rows: Sequence[int] | np.ndarray | None = None, *, labels: bool | None = None
    ) -> None:
        """Refuse bad values in array ``name`` (``rows``, default all), read in chunks.

        Label arrays (uint8; ``labels`` overrides the guess) must hold 0..3, others be finite.

        Raises:
            BadInputError: naming the file, the array and the first bad row (patient, phase, slice).
        """
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        for start in range(0, len(rows), 256):
            part = rows[start : start + 256]
            check_values(self.path, name, self.read(name, part), part, self, labels=labels)

    def spacing(self) -> np.ndarray:
        """(N, 2) pixel spacing (row_mm, col_mm) of every row, after crop and resize."""
        idx = self.index
        return np.stack([idx.spacing_row.to_numpy(), idx.spacing_col.to_numpy()], axis=1).astype(np.float64)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary for ``acdctool info``."""
        idx = self.index
        patients = idx.drop_duplicates("patient")
        volumes = idx.drop_duplicates(list(VOLUME_KEY))
        by_split = idx.groupby("split").patient.nunique().to_dict()
        return {
            "path": str(self.path),
            "kind": self.kind,
            "schema_version": SCHEMA_VERSION,
            "tool_version": self.tool_version,
            "rows": len(self),
            "shape": list(self.shape),
            "patients": int(idx.patient.nunique()),
            "volumes": int(len(volumes)),
            "empty_gt_slices": self._empty_gt_count(),
            "patients_per_group": {str(k): int(v) for k, v in patients.groupby("group").size().items()},
            "patients_per_split": {str(k): int(v) for k, v in by_split.items()},
            "rows_per_split": {str(k): int(v) for k, v in idx.groupby("split").size().items()},
            "folds": {str(k): int(v) for k, v in patients[patients.fold >= 0].groupby("fold").size().items()},
            "models": sorted(m for m in idx.model.unique() if m),
            "spacing_mm": {
                "min": float(min(idx.spacing_row.min(), idx.spacing_col.min())) if len(idx) else None,
                "max": float(max(idx.spacing_row.max(), idx.spacing_col.max())) if len(idx) else None,
            },
            "arrays": {
                name: {"shape": list(self._h5[name].shape), "dtype": str(self._h5[name].dtype)} for name in self.arrays
            },
            "config": self.config,
            "provenance": self.provenance,
        }

    def _empty_gt_count(self) -> int | None:
        if not self.has("gt"):
            return None
        n, count = len(self), 0
        for start in range(0, n, 256):
            part = self.read("gt", slice(start, min(start + 256, n)))
            count += int((~part.reshape(len(part), -1).any(axis=1)).sum())
        return count


def check_values(
    path: Path | str,
    name: str,
    values: np.ndarray,
    rows: Sequence[int] | np.ndarray | None = None,
    source: SliceFile | None = None,
    *,
    labels: bool | None = None,
) -> None:
    """Refuse labels outside 0..3 (integer arrays, or ``labels=True``) or NaN/inf (float arrays).

    Args:
        path, name: for the message.
        values: (n, ...) rows of the array.
        rows: the file rows they are (default ``0..n-1``), for the message.
        source: the open file, to name the row's patient, phase and slice.

    Raises:
        BadInputError: naming the first bad row.

    Example:
        >>> check_values("s.h5", "gt", np.array([[[0, 4]]], np.uint8))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        acdctool.errors.BadInputError: s.h5: 'gt' row 0 has labels outside 0..3 (4); ...
    """
    if values.size == 0:
        return
    flat = values.reshape(len(values), -1)
    is_labels = labels if labels is not None else not np.issubdtype(values.dtype, np.floating)
    if is_labels:
        bad_rows = ((flat < 0) | (flat > 3)).any(axis=1) if values.dtype.kind != "u" else (flat > 3).any(axis=1)
        if not bad_rows.any():
            return
        i = int(np.flatnonzero(bad_rows)[0])
        what = f"has labels outside 0..3 ({flat[i][(flat[i] < 0) | (flat[i] > 3)][0]})"
        hint = "labels must be 0 background, 1 RV, 2 MYO, 3 LV"
    else:
        bad_rows = ~np.isfinite(flat).all(axis=1)
        if not bad_rows.any():
            return
        i = int(np.flatnonzero(bad_rows)[0])
        what = "has NaN or infinite values"
        hint = "re-run prep (see --nonfinite)"
    row = i if rows is None else int(np.asarray(rows)[i])
    where = source._describe(row) if source is not None else ""
    raise BadInputError(f"{path}: '{name}' row {row}{where} {what}; {hint}")


def _readable(ds: h5py.Dataset, row: int) -> bool:
    try:
        ds[row]
    except (OSError, RuntimeError, ValueError):
        return False
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def volume_groups(index: pd.DataFrame) -> list[tuple[tuple[str, str, str], np.ndarray]]:
    """The volumes of a slice index: ``((patient, phase, model), row numbers)`` sorted by key.

    Row numbers are positions (``iloc``) ordered by slice position (a stable sort).

    Example:
        >>> index = pd.DataFrame({"patient": ["p1", "p1", "p0"], "phase": "ED", "model": "", "slice": [1, 0, 0]})
        >>> [(key, rows.tolist()) for key, rows in volume_groups(index)]
        [(('p0', 'ED', ''), [2]), (('p1', 'ED', ''), [1, 0])]
    """
    slices = index["slice"].to_numpy()
    out = []
    for key, rows in index.groupby(list(VOLUME_KEY), sort=True).indices.items():
        patient, phase, model = cast(tuple[str, str, str], key)  # one value per VOLUME_KEY column
        positions = np.asarray(rows, dtype=np.intp)
        out.append(((patient, phase, model), positions[np.argsort(slices[positions], kind="stable")]))
    return out
