"""Public pretraining of the latent generator, once, on public faces: the weights every tenant starts from.

    python -m umbra.anonymization.pretrain --faces ../shared/data/utkface64-dev:1000 --synthetic 3000
    python -m umbra.anonymization.pretrain --help

Two stages, on public faces only (never a tenant's: the weights ship with Umbra, and DP-SGD later touches only
the denoiser, which sees a tenant's faces; ALGORITHMS.md §5):

1. the face autoencoder (umbra.diffusion.latent), on L1 + a scattering perceptual loss + a patch discriminator
   from step `adversarial_from` on (umbra.diffusion.autoencoder_losses), with flips and shifts of up to `shift`
   px; `real_share` of every batch is real faces when synthetic ones are mixed in. Sampling is per step from
   `numpy.random.default_rng([seed, step])`, so a run is deterministic for a seed and a stopped run resumes
   exactly from its last checkpoint (`--checkpoints`, every `checkpoint_every` steps; the learning rate is
   constant, so `--steps` may be raised on resume);
2. the public denoiser, on the frozen autoencoder's latents, conditioned on every attribute the faces have
   (a face without an attribute is trained with its `null`: unconditioned), without DP.

The faces: each `--faces DIR[:N]` is a folder laid out as images/ and labels.csv (`file` first). Its faces are
ordered by the SHA-256 of their bytes and the first N taken (all without N), so the same folder gives the same
faces on any machine; the last `held_out` share of each source (synthetic faces too) is held out, never trained
on, and gives the card's figures. `--synthetic N` adds umbra.dataset.synthetic's faces (seed 1000 onwards, not
the seeds the tests and the demo draw their tenants' faces from).

It writes into `--out` (default: the weights Umbra ships, umbra/anonymization/public/):
- `public-faces-64.safetensors`: the whole generator (autoencoder, denoiser, attribute embeddings);
- `public-faces-64.json`: its card (umbra.anonymization.public_generator.Card): the weights' SHA-256, the
  generator's configuration, the data (each source's face count and digest), the settings, the steps and epochs,
  the loss curves, and the autoencoder-alone figures on the held-out faces (`quality`:
  umbra.anonymization.quality.realism; `kept_utility`: a classifier of the training service's best recipe
  trained on reconstructed faces over one trained on originals, both tested on held-out originals);
- `public-faces-64.faces.txt`: the SHA-256 of every real face used (trained on or held out), so that a
  benchmark never measures on a face the public model has seen.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from umbra.diffusion.attributes import Attribute, schema_for
from umbra.diffusion.generator import build, latent_clip_for
from umbra.diffusion.generator_config import GeneratorConfig

log = logging.getLogger(__name__)

NAME = "public-faces-64"
ATTRIBUTES = ("gender", "race", "skin_tone", "age")  # conditioned on where the faces have them
KEPT = {"race", "skin_tone"}  # the attributes whose utility the card reports (the benchmark's and demo's kept ones)
MIN_FACES = 500
SYNTHETIC_SEED = 1000
DEFAULT_OUT = Path(__file__).resolve().parent / "public"


class PretrainingDataError(ValueError):
    """Faces that cannot be pretrained on; the message names the folder, the file and the reason."""


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    steps: int = 3000  # autoencoder steps
    batch: int = 32
    learning_rate: float = 5e-4
    perceptual_weight: float = 1.0
    adversarial_weight: float = 0.05
    adversarial_from: int = 800  # the discriminator trains from half this step, the autoencoder against it from it
    shift: int = 4  # augmentation: shifts of up to this many px (edges replicated), and mirror images
    real_share: float = 0.5  # of each batch, drawn from the real faces (when there are synthetic ones too)
    denoiser_epochs: int = 200
    denoiser_batch: int = 256
    image_size: int = 64
    latent_dim: int = 64
    held_out: float = 0.1
    checkpoint_every: int = 100
    classifier_epochs: int = 20  # the card's utility classifiers: the recipe's 20 (0: no utility figures)
    device: str = "cpu"

    # what a checkpoint must share with the run resuming it (steps may grow; the rest is bookkeeping)
    RESUMABLE = ("steps", "checkpoint_every", "denoiser_epochs", "denoiser_batch", "classifier_epochs", "device")

    def resume_key(self, data_digest: str) -> str:
        kept = {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RESUMABLE}
        return hashlib.sha256(json.dumps([kept, data_digest], sort_keys=True).encode()).hexdigest()


@dataclass
class Faces:
    """Pretraining faces: uint8 images, their label values (None where a source lacks the column), per-face digests
    and whether each is held out."""

    images: torch.Tensor
    values: dict[str, list[str | None]]
    digests: list[str]
    held_out: torch.Tensor  # bool (N,)
    real: torch.Tensor  # bool (N,): from a folder (not synthetic)
    sources: list[dict] = field(default_factory=list)

    @property
    def digest(self) -> str:
        """SHA-256 over every face's digest and labels, in order: the card's data digest."""
        h = hashlib.sha256()
        for i, d in enumerate(self.digests):
            h.update(d.encode())
            h.update(json.dumps([self.values[c][i] for c in sorted(self.values)]).encode())
        return h.hexdigest()


def read_folder(spec: str, image_size: int, held_out: float) -> tuple[list[bytes], dict[str, list[str]], list[str],
                                                                       dict]:
    """`DIR[:N]` -> (image bytes, label columns, digests, source summary), checked before anything trains."""
    folder, _, limit = spec.partition(":")
    path = Path(folder)
    if limit and not limit.isdigit():
        raise PretrainingDataError(f"--faces {spec}: N after ':' must be a whole number")
    labels = path / "labels.csv"
    if not (path / "images").is_dir():
        raise PretrainingDataError(f"{path}: no images/ folder")
    if not labels.is_file():
        raise PretrainingDataError(f"{path}: labels missing (no labels.csv); every public face needs its labels")
    with open(labels, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        columns = [c for c in header if c in ATTRIBUTES]
        if not header or header[0] != "file" or not columns:
            raise PretrainingDataError(f"{labels}: the header must be 'file' then labels, at least one of "
                                       f"{', '.join(ATTRIBUTES)} (it is {','.join(header) or 'empty'})")
        rows = list(reader)
    entries = []
    for line, row in enumerate(rows, start=2):
        missing = [c for c in columns if not (row.get(c) or "").strip()]
        if missing:
            raise PretrainingDataError(f"{labels} line {line} ({row.get('file')}): labels missing for "
                                       f"{', '.join(missing)}")
        image = path / "images" / (row["file"] or "")
        if not row["file"] or not image.is_file():
            raise PretrainingDataError(f"{labels} line {line}: image {row['file']!r} not found in {path / 'images'}")
        data = image.read_bytes()
        entries.append((hashlib.sha256(data).hexdigest(), data, {c: row[c].strip() for c in columns}))
    entries.sort(key=lambda e: e[0])
    if limit:
        entries = entries[:int(limit)]
    digests = [e[0] for e in entries]
    summary = {"source": path.name, "faces": len(entries), "columns": columns,
               "digest": hashlib.sha256("".join(digests).encode()).hexdigest(),
               "held_out": _held_out_count(len(entries), held_out)}
    return [e[1] for e in entries], {c: [e[2][c] for e in entries] for c in columns}, digests, summary


def _held_out_count(n: int, share: float) -> int:
    return int(round(n * share))


def load_faces(folders: list[str], synthetic: int, settings: Settings) -> Faces:
    from umbra.classifiers.data import decode
    from umbra.dataset import synthetic as synthetic_faces

    blobs, digests, sources, held, real = [], [], [], [], []
    values: dict[str, list[str | None]] = {}

    def add(data: list[bytes], columns: dict[str, list[str]], face_digests: list[str], summary: dict,
            is_real: bool) -> None:
        start = len(blobs)
        blobs.extend(data)
        digests.extend(face_digests)
        for name in set(values) | set(columns):
            values.setdefault(name, [None] * start).extend(columns.get(name, [None] * len(data)))
        cut = len(data) - summary["held_out"]
        held.extend(i >= cut for i in range(len(data)))
        real.extend([is_real] * len(data))
        sources.append(summary)

    for spec in folders:
        add(*read_folder(spec, settings.image_size, settings.held_out), is_real=True)
    if synthetic:
        faces = list(synthetic_faces.generate(synthetic, size=settings.image_size, seed=SYNTHETIC_SEED))
        columns = {c: [synthetic_faces.csv_value(f.attributes[c]) for f in faces] for c in ATTRIBUTES
                   if c in faces[0].attributes}
        face_digests = [hashlib.sha256(f.png).hexdigest() for f in faces]
        add([f.png for f in faces], columns, face_digests,
            {"source": "synthetic", "faces": len(faces), "seed": SYNTHETIC_SEED, "columns": sorted(columns),
             "digest": hashlib.sha256("".join(face_digests).encode()).hexdigest(),
             "held_out": _held_out_count(len(faces), settings.held_out)}, is_real=False)
    trained = len(blobs) - sum(held)
    if trained < MIN_FACES:
        raise PretrainingDataError(f"pretraining needs at least {MIN_FACES} faces to train on; these sources give "
                                   f"{trained} (after {sum(held)} held out)")
    images = torch.from_numpy(np.stack([decode(b, settings.image_size) for b in blobs]))
    return Faces(images, values, digests, torch.tensor(held), torch.tensor(real), sources)


def schema(faces: Faces) -> tuple[Attribute, ...]:
    present = [a for a in ATTRIBUTES if a in faces.values]
    return schema_for({c: [v for v in faces.values[c] if v is not None] for c in present}, present)


def label_indices(faces: Faces, attributes: tuple[Attribute, ...]) -> torch.Tensor:
    rows = [[a.null if faces.values[a.name][i] is None else a.index(faces.values[a.name][i]) for a in attributes]
            for i in range(len(faces.digests))]
    return torch.tensor(rows, dtype=torch.int64)


def augment(images: torch.Tensor, rng: np.random.Generator, shift: int) -> torch.Tensor:
    """uint8 -> [-1, 1], each image mirrored or not and shifted by up to `shift` px (edges replicated)."""
    x = images.float().div(127.5).sub(1.0)
    size = x.shape[-1]
    padded = F.pad(x, (shift,) * 4, mode="replicate") if shift else x
    out = torch.empty_like(x)
    for i in range(len(x)):
        dy, dx = (rng.integers(0, 2 * shift + 1, size=2) if shift else (0, 0))
        face = padded[i, :, dy:dy + size, dx:dx + size]
        out[i] = face.flip(-1) if rng.random() < 0.5 else face
    return out


def _save_atomically(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def train_autoencoder(net, faces: Faces, settings: Settings, checkpoints: Path | None, key: str,
                      report: Callable[[str], None]) -> dict:
    """Stage 1; returns its curves. Resumes from `checkpoints/autoencoder.pt` when its key matches."""
    from umbra.diffusion.autoencoder_losses import (PatchDiscriminator, ScatteringLoss, discriminator_hinge,
                                                    generator_hinge)

    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    critic = PatchDiscriminator().to(device)
    perceptual = ScatteringLoss(settings.image_size).to(device)
    parts = [p for m in net.autoencoder for p in m.parameters()]
    optimizer = torch.optim.Adam(parts, lr=settings.learning_rate, betas=(0.5, 0.9))
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=settings.learning_rate, betas=(0.5, 0.9))
    train_images = faces.images[~faces.held_out]
    real = faces.real[~faces.held_out].numpy()
    pools = [np.flatnonzero(real), np.flatnonzero(~real)]
    real_count = round(settings.batch * settings.real_share) if all(len(p) for p in pools) else 0
    curves: dict[str, list] = {"step": [], "l1": [], "perceptual": [], "adversarial": [], "critic": []}
    start = 0
    saved = checkpoints / "autoencoder.pt" if checkpoints else None
    if saved is not None and saved.exists():
        state = torch.load(saved, weights_only=True, map_location=device)
        if state["key"] != key:
            raise PretrainingDataError(f"{saved} is a checkpoint of another run (other data or settings): remove it "
                                       f"or give another --checkpoints folder")
        net.load_state_dict(state["net"])
        critic.load_state_dict(state["critic"])
        optimizer.load_state_dict(state["optimizer"])
        critic_optimizer.load_state_dict(state["critic_optimizer"])
        curves, start = state["curves"], state["step"]
        report(f"resumed the autoencoder at step {start}")
    window: dict[str, list[float]] = {k: [] for k in curves if k != "step"}
    began = time.monotonic()
    for step in range(start, settings.steps):
        rng = np.random.default_rng([settings.seed, step])
        if real_count:  # real faces are harder than synthetic ones, and fewer: a fixed share of every batch
            chosen = np.concatenate([rng.choice(pools[0], real_count, replace=False),
                                     rng.choice(pools[1], settings.batch - real_count, replace=False)])
        else:
            chosen = rng.choice(len(train_images), settings.batch, replace=False)
        batch = train_images[torch.from_numpy(chosen)]
        x = augment(batch, rng, settings.shift).to(device)
        reconstructed = net.decode_scaled(net.encode_scaled(x))
        l1 = (reconstructed - x).abs().mean()
        perceptual_loss = perceptual(reconstructed, x)
        loss = l1 + settings.perceptual_weight * perceptual_loss
        adversarial = torch.zeros(())
        if step >= settings.adversarial_from:
            adversarial = generator_hinge(critic(reconstructed))
            loss = loss + settings.adversarial_weight * adversarial
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        critic_loss = torch.zeros(())
        if step >= settings.adversarial_from // 2:
            critic_loss = discriminator_hinge(critic(x), critic(reconstructed.detach()))
            critic_optimizer.zero_grad(set_to_none=True)
            critic_loss.backward()
            critic_optimizer.step()
        for name, value in (("l1", l1), ("perceptual", perceptual_loss), ("adversarial", adversarial),
                            ("critic", critic_loss)):
            window[name].append(float(value.detach()))
        done = step + 1
        if done % 50 == 0 or done == settings.steps:
            curves["step"].append(done)
            for name in window:
                curves[name].append(round(float(np.mean(window[name])), 5))
                window[name] = []
            rate = (done - start) / max(time.monotonic() - began, 1e-9)
            report(f"autoencoder step {done}/{settings.steps}: L1 {curves['l1'][-1]:.4f}, perceptual "
                   f"{curves['perceptual'][-1]:.4f}, adversarial {curves['adversarial'][-1]:.3f}, critic "
                   f"{curves['critic'][-1]:.3f} ({rate:.2f} steps/s)")
        if saved is not None and (done % settings.checkpoint_every == 0 or done == settings.steps):
            saved.parent.mkdir(parents=True, exist_ok=True)
            state = {"key": key, "step": done, "net": net.state_dict(), "critic": critic.state_dict(),
                     "optimizer": optimizer.state_dict(), "critic_optimizer": critic_optimizer.state_dict(),
                     "curves": curves}
            _save_atomically(saved, lambda handle, state=state: torch.save(state, handle))
    return curves


def train_denoiser(net, faces: Faces, settings: Settings, report: Callable[[str], None]) -> list[float]:
    """Stage 2: the denoiser and attribute embeddings on the frozen autoencoder's latents; the loss per epoch."""
    from umbra.diffusion.training import GeneratorHyper, train

    for part in net.autoencoder:
        part.requires_grad_(False)
    keep = ~faces.held_out
    labels = label_indices(faces, net.config.attributes)[keep]
    curve: list[float] = []

    def on_epoch(epoch_report, _checkpoint) -> None:
        curve.append(round(epoch_report.loss, 5))
        if epoch_report.epoch % 20 == 0 or epoch_report.epoch == epoch_report.epochs:
            report(f"denoiser epoch {epoch_report.epoch}/{epoch_report.epochs}: loss {epoch_report.loss:.4f}")

    hyper = GeneratorHyper(epochs=settings.denoiser_epochs, batch_size=settings.denoiser_batch,
                           physical_batch_size=settings.denoiser_batch, learning_rate=1e-3)
    train(net, faces.images[keep], labels, hyper, None, settings.seed, on_epoch=on_epoch)
    for part in net.autoencoder:
        part.requires_grad_(True)
    return curve


@torch.no_grad()
def reconstruct(net, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    net.eval()
    return torch.cat([net.decode(net.encode(part)) for part in images.split(chunk)])


def autoencoder_figures(net, faces: Faces, settings: Settings, report: Callable[[str], None]) -> dict:
    """The autoencoder alone on the held-out faces: quality on the real ones, kept utility per kept attribute on
    each source's own held-out faces."""
    from umbra.anonymization.quality import realism

    net = net.cpu()
    figures: dict = {"held_out_faces": int(faces.held_out.sum())}
    test_real = faces.held_out & faces.real
    train_real = ~faces.held_out & faces.real
    if test_real.any():
        reconstructed = reconstruct(net, faces.images[test_real])
        figures["quality"] = realism(reconstructed, faces.images[test_real], faces.images[train_real])
        figures["reconstruction_mse"] = round(float((reconstructed.float() - faces.images[test_real].float())
                                                    .div(255).pow(2).mean()), 5)
        report(f"autoencoder alone: quality {figures['quality']}")
    if settings.classifier_epochs:
        figures["kept_utility"] = {}
        for name in sorted(KEPT & set(faces.values)):
            has = torch.tensor([v is not None for v in faces.values[name]])
            figures["kept_utility"][name] = kept_utility(net, faces, name, has, settings)
            report(f"autoencoder alone: {name} utility {figures['kept_utility'][name]['ratio']}")
    return figures


def kept_utility(net, faces: Faces, name: str, has: torch.Tensor, settings: Settings) -> dict:
    """A `name` classifier (the best recipe) trained on reconstructed training faces, over one trained on the
    originals; both tested on the held-out originals (balanced accuracy)."""
    from dataclasses import replace

    from umbra.anonymization.quality import at
    from umbra.classifiers import loop, recipes
    from umbra.classifiers.data import LabelledImages
    from umbra.classifiers.evaluation import measure

    classes = sorted({v for v, h in zip(faces.values[name], has.tolist(), strict=True) if h}, key=lambda v: (len(v), v))
    index = torch.tensor([classes.index(v) if v is not None else -1 for v in faces.values[name]])
    train, test = has & ~faces.held_out, has & faces.held_out
    recipe = recipes.NONPRIVATE
    recipe = replace(recipe, hyper=replace(recipe.hyper, epochs=settings.classifier_epochs))
    keys = [str(i) for i in range(int(train.sum()))]
    size = recipe.image_size  # the recipe's ScatterNet takes 32 px: every face is reduced (area) to it
    held = LabelledImages(at(faces.images[test], size), index[test], classes, [str(i) for i in range(int(test.sum()))])
    scores = {}
    for what, images in (("originals", faces.images[train]), ("reconstructed", reconstruct(net, faces.images[train]))):
        model, _ = recipes.fit(recipe, LabelledImages(at(images, size), index[train], classes, keys),
                               seed=settings.seed)
        scores[what] = measure(loop.predict(model, held), held.labels, classes).balanced_accuracy
    return {"originals": round(scores["originals"], 4), "reconstructed": round(scores["reconstructed"], 4),
            "ratio": round(scores["reconstructed"] / scores["originals"], 4), "test_faces": int(test.sum())}


def pretrain(folders: list[str], synthetic: int, settings: Settings, out: Path, checkpoints: Path | None,
             report: Callable[[str], None] = print) -> dict:
    """The whole run; returns the card written beside the weights."""
    from safetensors.torch import save

    from umbra.anonymization.public_generator import Card, card_path, faces_path, weights_path

    began = time.monotonic()
    torch.manual_seed(settings.seed)
    faces = load_faces(folders, synthetic, settings)
    attributes = schema(faces)
    trained = int((~faces.held_out).sum())
    report(f"{len(faces.digests)} faces ({trained} to train on, {int(faces.held_out.sum())} held out); "
           f"conditioning on {', '.join(a.name for a in attributes)}")
    config = GeneratorConfig(image_size=settings.image_size, attributes=attributes, design="latent",
                             latent_dim=settings.latent_dim, latent_clip=latent_clip_for(settings.latent_dim))
    torch.manual_seed(settings.seed)
    net = build(config).to(settings.device)
    key = settings.resume_key(faces.digest)
    curves = train_autoencoder(net, faces, settings, checkpoints, key, report)
    ae_seconds = time.monotonic() - began
    net = net.cpu()
    denoiser_curve = train_denoiser(net, faces, settings, report)
    figures = autoencoder_figures(net, faces, settings, report)
    out.mkdir(parents=True, exist_ok=True)
    weights = save({k: v.contiguous() for k, v in net.state_dict().items()})
    _save_atomically(weights_path(out, NAME), lambda handle: handle.write(weights))
    real = [d for d, r in zip(faces.digests, faces.real.tolist(), strict=True) if r]
    _save_atomically(faces_path(out, NAME), lambda handle: handle.write("".join(f"{d}\n" for d in real).encode()))
    card = Card(
        name=NAME, weights=weights_path(out, NAME).name, sha256=hashlib.sha256(weights).hexdigest(),
        config=json.loads(config.to_json()),
        data={"digest": faces.digest, "sources": faces.sources, "trained_on": trained,
              "real_faces_listed_in": faces_path(out, NAME).name},
        settings=dataclasses.asdict(settings),
        training={"autoencoder_steps": settings.steps,
                  "autoencoder_epochs": round(settings.steps * settings.batch / trained, 2),
                  "denoiser_epochs": settings.denoiser_epochs, "autoencoder_seconds": round(ae_seconds, 1),
                  "seconds": round(time.monotonic() - began, 1), "torch": torch.__version__,
                  "code_version": package_version("umbra")},
        curves={"autoencoder": curves, "denoiser_loss": denoiser_curve},
        autoencoder_alone=figures)
    _save_atomically(card_path(out, NAME), lambda handle: handle.write(card.to_json().encode()))
    report(f"wrote {weights_path(out, NAME)} ({len(weights) / 1e6:.1f} MB) and its card")
    return card.to_dict()


def main(argv: list[str] | None = None) -> int:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m umbra.anonymization.pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", action="append", default=[], metavar="DIR[:N]",
                        help="a folder of public faces (images/ and labels.csv); :N takes N of them (repeatable)")
    parser.add_argument("--synthetic", type=int, default=3000, help="synthetic faces to add (default 3000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write (default {DEFAULT_OUT})")
    parser.add_argument("--checkpoints", type=Path, default=Path("out/pretrain"),
                        help="checkpoint folder, resumed from when present (default out/pretrain)")
    for name, value in dataclasses.asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                            help=f"default {value}")
    args = parser.parse_args(argv)
    settings = Settings(**{k: getattr(args, k) for k in dataclasses.asdict(defaults)})
    if settings.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {settings.device}: no CUDA device here")
    logging.basicConfig(level=logging.WARNING)
    try:
        pretrain(args.faces, args.synthetic, settings, args.out, args.checkpoints,
                 report=lambda line: print(line, flush=True))
    except PretrainingDataError as error:
        print(f"pretrain: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
