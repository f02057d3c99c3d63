"""NVAE candidates for ``refine``: posterior-mean reconstruction plus optional samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from acdctool.config import RefineConfig
from acdctool.data.loader import one_hot
from acdctool.errors import BadInputError
from acdctool.io.checkpoint import file_sha256, load_checkpoint
from acdctool.stages import morph
from acdctool.train.dist import resolve_device


class NvaeProposer:
    """Callable ``(masks (B,H,W), context (B,3,H,W) | None) -> [candidates (B,H,W)]``.

    The first candidate is the posterior-mean decoding (deterministic); ``config.samples``
    more are decoded with temperature ``config.temperature`` from a generator seeded with
    ``config.seed``, so a run is reproducible. With ``config.polish`` each is also offered
    after :func:`acdctool.stages.morph.clean_batch`.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, config: RefineConfig, info: dict[str, Any]):
        self.model, self.device, self.config, self.info = model, device, config, info

    @classmethod
    def load(cls, path: Path, config: RefineConfig, image_shape: tuple[int, int], path_for_errors: Path) -> NvaeProposer:
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
                "or the matching checkpoint")
        size = int(args.get("image_size", image_shape[0]))
        if (size, size) != tuple(image_shape):
            raise BadInputError(f"{path}: NVAE made for {size}×{size} slices, {path_for_errors} has "
                                f"{image_shape[0]}×{image_shape[1]}")
        device = resolve_device(config.device)
        model = NVAE.from_args(args)
        model.load_state_dict(ckpt.state_dict)
        model.to(device).eval()
        info = {"path": str(Path(path).resolve()), "sha256": file_sha256(path), "args": args,
                "trained_on": ckpt.data, "epoch": (ckpt.train or {}).get("epoch")}
        return cls(model, device, config, info)

    @torch.inference_mode()
    def __call__(self, masks: np.ndarray, context: np.ndarray | None) -> list[np.ndarray]:
        labels = torch.from_numpy(np.ascontiguousarray(context if context is not None else masks))
        x = one_hot(labels.to(self.device))
        out = [self.model.reconstruct(x, mode="mean").argmax(1)]
        if self.config.samples:
            gen = torch.Generator(device=self.device).manual_seed(self.config.seed)
            for _ in range(self.config.samples):
                logits = self.model.reconstruct(x, mode="sample", temperature=self.config.temperature, generator=gen)
                out.append(logits.argmax(1))
        candidates = [o.to("cpu", torch.uint8).numpy() for o in out]
        if self.config.polish:
            candidates += [morph.clean_batch(c) for c in candidates]
        return candidates
