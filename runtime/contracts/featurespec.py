"""FeatureSpec: the shape of the teacher's t=50 features, the contract between teacher, student and edge.

Written by the teacher into its checkpoint's ``config.json``, copied into every student artifact's
``manifest.json``, and checked wherever the two meet (DESIGN.md, "Contracts").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from runtime.contracts.formats import ContractError, check_format

FEATURE_SPEC_VERSION = 1


@dataclass(frozen=True)
class LevelSpec:
    name: str  # also the ONNX output name of the student's projection for this level, e.g. "s8"
    stride: int  # on the input image
    channels: int


@dataclass(frozen=True)
class FeatureSpec:
    image_size: int
    levels: tuple[LevelSpec, ...]
    timestep: int = 50
    source: str = ""  # where in the teacher the maps come from, e.g. "unet.up_blocks[3..0] outputs"
    version: int = FEATURE_SPEC_VERSION

    def grid(self, level: LevelSpec | str) -> int:
        """Side of the square feature map of one level: image_size // stride."""
        lv = self.level(level) if isinstance(level, str) else level
        return self.image_size // lv.stride

    def level(self, name: str) -> LevelSpec:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise KeyError(f"FeatureSpec has no level {name!r}; levels are {[lv.name for lv in self.levels]}")

    @property
    def names(self) -> list[str]:
        return [lv.name for lv in self.levels]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        v = check_format(d, "FeatureSpec", versions=(FEATURE_SPEC_VERSION,), version_key="version")
        try:
            levels = tuple(LevelSpec(**lv) for lv in d["levels"])
            return cls(image_size=int(d["image_size"]), levels=levels, timestep=int(d["timestep"]),
                       source=str(d.get("source", "")), version=v)
        except (KeyError, TypeError) as e:
            raise ContractError(f"FeatureSpec is malformed: {e}") from e

    def check_compatible(self, other: "FeatureSpec", what: str = "student") -> None:
        """Raise ContractError naming the first difference between two specs that must agree."""
        if self.timestep != other.timestep:
            raise ContractError(f"{what} FeatureSpec timestep {other.timestep} != teacher timestep {self.timestep}")
        if self.image_size != other.image_size:
            raise ContractError(f"{what} FeatureSpec image_size {other.image_size} != teacher image_size {self.image_size}")
        if len(self.levels) != len(other.levels):
            raise ContractError(f"{what} FeatureSpec has {len(other.levels)} levels, teacher has {len(self.levels)}")
        for a, b in zip(self.levels, other.levels):
            if (a.stride, a.channels) != (b.stride, b.channels):
                raise ContractError(
                    f"{what} level {b.name}: stride/channels {b.stride}/{b.channels} != teacher {a.stride}/{a.channels}")


def sd15_feature_spec(image_size: int = 512) -> FeatureSpec:
    """The SD1.5 U-Net's four up-block outputs at strides 8/16/32/64 of the image."""
    return FeatureSpec(
        image_size=image_size,
        levels=(LevelSpec("s8", 8, 320), LevelSpec("s16", 16, 640),
                LevelSpec("s32", 32, 1280), LevelSpec("s64", 64, 1280)),
        source="unet.up_blocks[3,2,1,0] outputs (finest first)",
    )
