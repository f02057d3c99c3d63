"""NVAE agreement for QC: each patient scored by an NVAE that never saw it, in batches.

Several checkpoints may be given, typically one per fold. Each patient gets the first one
that did not train on it (:func:`acdctool.models.nvae_io.patient_seen`: ``train_patients``
when the checkpoint records them, else its ``fold`` and ``folds`` map); when none qualifies,
or none can tell, the first checkpoint, and the row records it (``nvae_held_out`` ``no`` or
``unknown``): an NVAE that reconstructs shapes it learnt agrees more than it would on new
patients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from acdctool.conventions import N_CLASSES
from acdctool.models.nvae_io import LoadedNvae, load_nvae

__all__ = ["NvaeBank", "Assignment"]


@dataclass
class Assignment:
    """Per row: index of the checkpoint that scores it, and whether it never saw the patient."""

    model: np.ndarray
    """(N,) int: index into the bank's checkpoints."""
    held_out: np.ndarray
    """(N,) str: ``yes`` (never trained on the patient), ``no`` or ``unknown``."""

    def summary(self, bank: NvaeBank, index: pd.DataFrame) -> dict[str, Any]:
        """Patients per checkpoint and per held-out status (JSON-ready)."""
        pat = index["patient"].to_numpy()
        per_ckpt = {
            bank.models[k].info["path"]: int(pd.unique(pat[self.model == k]).size) for k in range(len(bank.models))
        }
        status = pd.Series(self.held_out).groupby(pat).first()
        return {"patients_per_checkpoint": per_ckpt, "held_out": status.value_counts().to_dict()}


class NvaeBank:
    """The NVAE checkpoints of one QC run.

    Args:
        models: loaded single-mask NVAEs (:func:`acdctool.models.nvae_io.load_nvae`).
    """

    def __init__(self, models: Sequence[LoadedNvae]) -> None:
        if not models:
            raise ValueError("NvaeBank needs at least one model")
        self.models = list(models)

    @classmethod
    def load(cls, paths: Sequence[Path], image_size: int, device: str = "auto") -> NvaeBank:
        """Load single-mask (4-channel) NVAEs for ``image_size``² slices.

        Raises:
            InputMissingError, FileKindError, BadInputError: see :func:`load_nvae`.
        """
        return cls([load_nvae(p, in_channels=N_CLASSES, image_size=image_size, device=device) for p in paths])

    @property
    def info(self) -> list[dict[str, Any]]:
        return [m.info for m in self.models]

    def assign(self, patients: Sequence[str] | np.ndarray) -> Assignment:
        """Choose the checkpoint of every row from its patient.

        Example:
            >>> folds = {"p1": 0, "p2": 1}
            >>> a = LoadedNvae(None, None, {}, {"fold": 0, "folds": folds})  # type: ignore[arg-type]
            >>> b = LoadedNvae(None, None, {}, {"fold": 1, "folds": folds})  # type: ignore[arg-type]
            >>> out = NvaeBank([a, b]).assign(["p1", "p2", "p3"])
            >>> out.model.tolist(), out.held_out.tolist()
            ([0, 1, 0], ['yes', 'yes', 'yes'])
        """
        pats = np.asarray(patients, dtype=object)
        choice: dict[str, tuple[int, str]] = {}
        for p in pd.unique(pats):
            seen = [m.seen(str(p)) for m in self.models]
            unseen = [k for k, s in enumerate(seen) if s is False]
            if unseen:
                choice[p] = (unseen[0], "yes")
            else:
                choice[p] = (0, "no" if seen[0] else "unknown")
        model = np.array([choice[p][0] for p in pats], dtype=np.int64)
        held = np.array([choice[p][1] for p in pats], dtype=object)
        return Assignment(model, held)

    def agreement(self, k: int, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior-mean reconstruction of ``masks`` by checkpoint ``k``.

        Args:
            k: index of the checkpoint.
            masks: ``(B, H, W)`` label maps.

        Returns:
            ``(recon, logp)``: the NVAE's labels ``(B, H, W)`` uint8 and the log-probability
            it gives each pixel's input label ``(B, H, W)`` float32.
        """
        import torch

        from acdctool.data.loader import argmax_labels

        m = self.models[k]
        with torch.inference_mode():
            labels = torch.from_numpy(np.ascontiguousarray(masks)).to(m.device, torch.long)
            x = torch.nn.functional.one_hot(labels, N_CLASSES).permute(0, 3, 1, 2).float()
            x = x.contiguous(memory_format=torch.channels_last)
            logits = m.model.reconstruct(x, mode="mean").float()
            logp = torch.log_softmax(logits, dim=1)
            recon = argmax_labels(logits)
            at_mask = logp.gather(1, labels.unsqueeze(1)).squeeze(1)
        return recon.to("cpu", torch.uint8).numpy(), at_mask.cpu().numpy()
