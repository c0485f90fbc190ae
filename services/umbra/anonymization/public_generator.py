"""The public generator Umbra ships: weights pretrained once on public faces (umbra.anonymization.pretrain),
beside a card that says what they are. Every tenant's DP generator starts from them (TrainGenerator's
`initialize_from_public`), so no run trains the public model again.

    shipped = load("public-faces-64")     # checks the weights' SHA-256 against the card before reading them
    shipped.config, shipped.weights, shipped.card.autoencoder_alone

A weights file whose digest differs from its card is refused (PublicWeightsError, naming both files): a card
describes exactly one set of weights, and the figures on it are only true of those.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from umbra.diffusion.generator_config import GeneratorConfig

FOLDER = Path(__file__).resolve().parent / "public"
NAMES = ("public-faces-64",)


class PublicWeightsError(ValueError):
    """Shipped weights that cannot be used: missing, or not the ones their card describes."""


@dataclass(frozen=True)
class Card:
    name: str
    weights: str  # the weights' file name, beside the card
    sha256: str  # of the weights file
    config: dict  # GeneratorConfig.to_json()
    data: dict  # digest, sources (faces, digest, held out), trained_on
    settings: dict
    training: dict  # steps, epochs, seconds, versions
    curves: dict
    autoencoder_alone: dict  # quality, reconstruction_mse, kept_utility on the held-out faces

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"

    @property
    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig.from_json(json.dumps(self.config))


@dataclass(frozen=True)
class PublicGenerator:
    card: Card
    weights: dict[str, torch.Tensor]

    @property
    def config(self) -> GeneratorConfig:
        return self.card.generator_config

    @property
    def record(self) -> dict:
        """What a generator version trained from it records as its start."""
        return {"public": self.card.name, "sha256": self.card.sha256, "data_digest": self.card.data["digest"],
                "privacy": {"dp": False, "public_data": True}}


def weights_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.safetensors"


def card_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.json"


def faces_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.faces.txt"


def read_card(name: str, folder: Path = FOLDER) -> Card:
    path = card_path(folder, name)
    if not path.is_file():
        raise PublicWeightsError(f"{name}: no card at {path} (shipped: {', '.join(NAMES)})")
    return Card(**json.loads(path.read_text()))


def load(name: str, folder: Path = FOLDER) -> PublicGenerator:
    """The card and the weights it describes; PublicWeightsError when the weights' SHA-256 is not the card's."""
    from safetensors.torch import load as load_bytes

    card = read_card(name, folder)
    path = folder / card.weights
    if not path.is_file():
        raise PublicWeightsError(f"{name}: the card {card_path(folder, name)} names {path}, which is missing")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != card.sha256:
        raise PublicWeightsError(f"{path}: SHA-256 {digest} is not the {card.sha256} that its card "
                                 f"{card_path(folder, name)} describes; refusing weights the card does not describe")
    return PublicGenerator(card, load_bytes(data))


def public_faces(name: str, folder: Path = FOLDER) -> set[str]:
    """The SHA-256 of every real face the public generator was pretrained or evaluated on."""
    path = faces_path(folder, name)
    return set(path.read_text().split()) if path.is_file() else set()
