"""NVAE candidates for the anatomy gate (``refine``, ``predict --nvae``): the posterior-mean
reconstruction, partial edits of the input towards it, latent steps towards the prior, optional
samples, and their morphological clean-ups."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from acdctool.config import Family, RefineConfig
from acdctool.conventions import resolve_device
from acdctool.correct import morph
from acdctool.correct.gate import Candidates
from acdctool.correct.patients import ModelPatients
from acdctool.data.loader import argmax_labels, one_hot
from acdctool.errors import BadInputError, ConfigError
from acdctool.io.checkpoint import file_sha256, load_checkpoint

if TYPE_CHECKING:
    from acdctool.models.nvae import NVAE


class NvaeProposer:
    """Callable ``(masks (B,H,W), context (B,3,H,W) | None) -> Candidates``.

    The input is encoded once. Candidates, in this order (ties in the gate go to the earlier):

    - ``recon``: the posterior-mean decoding (deterministic; what ``--gate none`` uses). Always
      computed, as the source of partial and per-structure edits; offered to the gate only
      with ``recon`` in ``config.candidates``;
    - ``morph``: :func:`acdctool.correct.morph.clean_batch` of the input (no shape model);
    - ``partial``: :func:`partial_edits` of the input towards it, one per ``config.partial``;
    - ``latent``: decodings with every group at ``(1 − α) · posterior mean + α · prior mean``,
      one per α of ``config.latent_steps`` (:meth:`acdctool.models.nvae.NVAE.decode`);
    - ``samples``: ``config.samples`` decodings at temperature ``config.temperature`` from a
      generator seeded with ``config.seed``, so a run is reproducible;
    - with ``config.polish``, each offered one but ``morph`` (already clean) again after
      :func:`acdctool.correct.morph.clean_batch` (family ``<family>+polish``).

    Families in ``config.fallback`` are made too, as tier 1: the gate offers them only to the
    slices that the ``config.candidates`` families could not make valid.

    Every unpolished NVAE decoding (not ``morph``) is a source of the gate's per-structure edits.
    """

    def __init__(
        self,
        model: NVAE,
        device: torch.device,
        config: RefineConfig,
        info: dict[str, Any],
        patients: ModelPatients | None = None,
    ):
        self.model, self.device, self.config, self.info = model, device, config, info
        self.patients = patients

    @classmethod
    def load(
        cls, path: Path, config: RefineConfig, image_shape: tuple[int, int], path_for_errors: Path
    ) -> NvaeProposer:
        """Load an NVAE checkpoint and check it fits the file and the context.

        Raises:
            FileKindError: not an NVAE checkpoint. BadInputError: wrong input channels
            (4 = single mask, 12 = 3-gram) or image size for this file, or weights that do
            not fit the stored model arguments.
        """
        from acdctool.models.nvae import NVAE

        ckpt = load_checkpoint(path, kinds=("nvae-model",))
        args = ckpt.model_args
        want = 12 if config.context == "3gram" else 4
        if int(args.get("in_channels", -1)) != want:
            kind = "a 3-gram" if int(args.get("in_channels", -1)) == 12 else "a single-mask"
            raise BadInputError(
                f"{path}: {kind} NVAE ({args.get('in_channels')} input channels) but --context {config.context} "
                f"needs {want}; use {'--context 3gram with a make-3gram file' if want == 4 else '--context none'} "
                "or the matching checkpoint"
            )
        size = int(args.get("image_size", image_shape[0]))
        if (size, size) != tuple(image_shape):
            raise BadInputError(
                f"{path}: NVAE made for {size}×{size} slices, {path_for_errors} has {image_shape[0]}×{image_shape[1]}"
            )
        device = resolve_device(config.device)
        try:
            model = NVAE.from_args(args)
            model.load_state_dict(ckpt.state_dict)
        except (RuntimeError, TypeError, ValueError, KeyError, ConfigError) as exc:
            raise BadInputError(
                f"{path}: weights do not fit the NVAE its arguments describe ({str(exc).strip().splitlines()[0]})"
            ) from None
        model.to(device).eval()
        patients = ModelPatients.from_data(path, ckpt.data)
        info = {
            "path": str(Path(path).resolve()),
            "sha256": file_sha256(path),
            "label": patients.label,
            "fold": patients.fold,
            "train_patients_from": patients.source,
            "args": args,
            "trained_on": ckpt.data,
            "epoch": (ckpt.train or {}).get("epoch"),
        }
        return cls(model, device, config, info, patients)

    @torch.inference_mode()
    def __call__(self, masks: np.ndarray, context: np.ndarray | None) -> Candidates:
        cfg, families = self.config, set(self.config.families)
        labels = torch.from_numpy(np.ascontiguousarray(context if context is not None else masks))
        feats = self.model.encode(one_hot(labels.to(self.device)))
        probs = self.model.decode(feats, mode="mean").float().softmax(1)
        recon = argmax_labels(probs)
        out = Candidates()

        fallback = set(cfg.fallback)

        def tier(family: str) -> int:
            return int(family in fallback)

        def add(name: str, family: str, labels: torch.Tensor, offered: bool = True) -> None:
            out.add(
                labels.to("cpu", torch.uint8).numpy(), name, family, offered=offered, source=True, tier=tier(family)
            )

        add("recon", Family.RECON.value, recon, offered=Family.RECON.value in families)
        if Family.MORPH.value in families:
            # The smallest edit of all, no shape model: a stray blob or a hole is often the only
            # fault, and the NVAE's own candidates would also drop a small apical structure.
            cleaned = morph.clean_batch(masks)
            out.add(cleaned, "morph", Family.MORPH.value, offered=True, source=False, tier=tier(Family.MORPH.value))
        if Family.PARTIAL.value in families and cfg.partial:
            current = torch.from_numpy(np.ascontiguousarray(masks)).to(self.device, torch.long)
            for t, edit in zip(cfg.partial, partial_edits(current, probs, cfg.partial, recon), strict=True):
                add(f"partial {t:g}", Family.PARTIAL.value, edit)
        if Family.LATENT.value in families:
            for alpha in cfg.latent_steps:
                add(
                    f"latent {alpha:g}",
                    Family.LATENT.value,
                    argmax_labels(self.model.decode(feats, toward_prior=alpha)),
                )
        if Family.SAMPLES.value in families and cfg.samples:
            gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
            for i in range(cfg.samples):
                logits = self.model.decode(feats, mode="sample", temperature=cfg.temperature, generator=gen)
                add(f"sample {i}", Family.SAMPLES.value, argmax_labels(logits))
        if cfg.polish:
            for k in [k for k in range(len(out)) if out.offered[k] and out.families[k] != Family.MORPH.value]:
                polished = morph.clean_batch(out.arrays[k])
                name, family = f"{out.names[k]}+polish", f"{out.families[k]}+polish"
                out.add(polished, name, family, offered=True, source=False, tier=out.tier[k])
        return out


def partial_edits(
    masks: torch.Tensor, probs: torch.Tensor, thresholds: tuple[float, ...], recon: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Edit the input only where the shape model is confident it is wrong, at several confidences.

    For each threshold ``t`` the candidate keeps the input's label wherever the NVAE gives that
    label a probability of at least ``t``, and takes the NVAE's label elsewhere: ``t → 0``
    gives back the input, ``t = 1`` the full reconstruction. Small ``t`` changes only the
    pixels the NVAE rejects outright (a stray blob, a hole), so an anatomically invalid slice
    is often made valid with a small edit, where the full reconstruction would also redraw
    every boundary (and, at the apex and base, drop small structures).

    Args:
        masks: (B, H, W) integer labels 0..3, the input.
        probs: (B, 4, H, W) NVAE class probabilities (softmax of the reconstruction logits).
        thresholds: probabilities in (0, 1], one candidate each.
        recon: (B, H, W) the NVAE's labels (``probs``' argmax) when already computed.

    Returns:
        One (B, H, W) label tensor per threshold, on ``masks``' device.

    Example:
        >>> m = torch.tensor([[[3, 3]]])  # one 1×2 slice, both pixels LV
        >>> p = torch.tensor([[[[0.9, 0.2]], [[0.0, 0.0]], [[0.0, 0.0]], [[0.1, 0.8]]]])
        >>> [e.tolist() for e in partial_edits(m, p, (0.05, 0.5))]
        [[[[3, 3]]], [[[0, 3]]]]
    """
    labels = masks.long()
    p_input = probs.gather(1, labels.unsqueeze(1)).squeeze(1)
    recon = argmax_labels(probs) if recon is None else recon
    return [torch.where(p_input >= t, labels, recon) for t in thresholds]
