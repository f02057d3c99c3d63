"""NVAE candidates for the anatomy gate (``refine``, ``predict --nvae``): the posterior-mean
reconstruction, partial edits of the input towards it, optional samples, and their
morphological clean-ups."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from acdctool.config import RefineConfig
from acdctool.conventions import resolve_device
from acdctool.correct import morph
from acdctool.data.loader import argmax_labels, one_hot
from acdctool.errors import BadInputError
from acdctool.io.checkpoint import file_sha256, load_checkpoint

if TYPE_CHECKING:
    from acdctool.models.nvae import NVAE


class NvaeProposer:
    """Callable ``(masks (B,H,W), context (B,3,H,W) | None) -> [candidates (B,H,W)]``.

    The first candidate is the posterior-mean decoding (deterministic; what ``--gate none``
    uses). Then come the :func:`partial_edits` of the input towards it, one per threshold of
    ``config.partial``, and ``config.samples`` decodings with temperature
    ``config.temperature`` from a generator seeded with ``config.seed``, so a run is
    reproducible. With ``config.polish`` each is also offered after
    :func:`acdctool.correct.morph.clean_batch`.
    """

    def __init__(self, model: NVAE, device: torch.device, config: RefineConfig, info: dict[str, Any]):
        self.model, self.device, self.config, self.info = model, device, config, info

    @classmethod
    def load(
        cls, path: Path, config: RefineConfig, image_shape: tuple[int, int], path_for_errors: Path
    ) -> NvaeProposer:
        """Load an NVAE checkpoint and check it fits the file and the context.

        Raises:
            FileKindError: not an NVAE checkpoint. BadInputError: wrong input channels
            (4 = single mask, 12 = 3-gram) or image size for this file.
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
        model = NVAE.from_args(args)
        model.load_state_dict(ckpt.state_dict)
        model.to(device).eval()
        info = {
            "path": str(Path(path).resolve()),
            "sha256": file_sha256(path),
            "args": args,
            "trained_on": ckpt.data,
            "epoch": (ckpt.train or {}).get("epoch"),
        }
        return cls(model, device, config, info)

    @torch.inference_mode()
    def __call__(self, masks: np.ndarray, context: np.ndarray | None) -> list[np.ndarray]:
        labels = torch.from_numpy(np.ascontiguousarray(context if context is not None else masks))
        x = one_hot(labels.to(self.device))
        probs = self.model.reconstruct(x, mode="mean").float().softmax(1)
        recon = argmax_labels(probs)
        out = [recon]
        if self.config.partial:
            current = torch.from_numpy(np.ascontiguousarray(masks)).to(self.device, torch.long)
            out += partial_edits(current, probs, self.config.partial, recon)
        if self.config.samples:
            gen = torch.Generator(device=self.device).manual_seed(self.config.seed)
            for _ in range(self.config.samples):
                logits = self.model.reconstruct(x, mode="sample", temperature=self.config.temperature, generator=gen)
                out.append(argmax_labels(logits))
        candidates = [o.to("cpu", torch.uint8).numpy() for o in out]
        if self.config.polish:
            candidates += [morph.clean_batch(c) for c in candidates]
        return candidates


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
