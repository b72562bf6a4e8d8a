"""Settings of the data layer: the data folder and loaders, training augmentation, the feature cache.

Pydantic models with every default and its reason, shared by the recipe and the Python API (one definition per
setting). Torch-free, so validating a recipe never imports torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tlkit.config import Section

MAX_BATCH_SIZE = 4096  # beyond this a CPU/GPU batch of images does not fit in memory at any useful input size
MAX_NUM_WORKERS = 64  # each worker is a process holding a copy of the dataset; more only costs memory
DEFAULT_SEED = 42  # the recipe's seed; also the split seed of the Python API's scans and datamodule
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_LABEL_DELIMITER = ";"
DEFAULT_TABLE = "labels.csv"


class DataConfig(Section):
    root: str
    """Image folder: root/{train,val,test}/<class>/ (val and test optional) or root/<class>/; with source: csv, the
    folder holding the table and the images it lists. Relative paths resolve against the recipe's folder."""
    source: Literal["folder", "csv", "litdata"] = "folder"
    """Where labels come from: folder = class subfolder names; csv = a table (data.csv) listing each image's path and
    label(s); litdata = a stream written by `tlkit data optimize SRC OUT` (root: OUT, a folder or s3:// prefix),
    whose images, labels, split and class names are fixed when it is written."""
    csv: str = DEFAULT_TABLE
    """source: csv: the table, relative to root, with columns path,label[,split] or path,<class1>,<class2>,...[,split]
    (0/1 per class); image paths in it are relative to the table's own folder and must stay inside root."""
    columns: dict[Literal["path", "label", "split"], str] | None = None
    """A table's own column names for path, label and split, e.g. {path: image_name, label: tags}, so a Kaggle-style
    CSV loads as it is (null = the names path, label, split)."""
    exclude: str | list[str] | None = None
    """Images left out of training, e.g. a reviewed findings.csv from tlkit audit: a CSV with a path column, a text
    file of paths, or a list; paths relative to data.root. Val and test keep theirs, so scores stay comparable."""
    relabel: str | None = None
    """A CSV of path,label (or audit's findings.csv: its suggested column) whose labels replace the given ones in
    every split; the images are not touched."""
    multi_label: bool | None = None
    """Several labels per image: null = decide from the table (multi-label when a label cell holds label_delimiter or
    the table has 0/1 class columns); class folders are always single-label."""
    label_delimiter: str = Field(default=DEFAULT_LABEL_DELIMITER, min_length=1, max_length=8)
    """Separator between the labels of one image in a table's label column (a;b), for multi-label data; " " splits
    at any run of spaces (Kaggle's space-separated tags)."""
    val_fraction: float = Field(default=DEFAULT_VAL_FRACTION, gt=0, lt=1)
    """Held-out fraction (stratified, seeded) carved from the training images when root has no val/ (or valid/)
    folder, or a table no val rows; val chooses the checkpoint."""
    test_fraction: float = Field(default=0.0, ge=0, lt=1)
    """Fraction carved as a test split (stratified, seeded) when root has no test/ folder (a table: no test rows);
    never used for selection,
    evaluated once at the end. 0 = no test split (small data keeps its images for training)."""
    batch_size: int = Field(default=32, gt=0, le=MAX_BATCH_SIZE)
    """Training batch size (1-4096); 32 fits a 2-core CPU at 224 px."""
    eval_batch_size: int | None = Field(default=None, gt=0, le=MAX_BATCH_SIZE)
    """Validation batch size (1-4096); null = 2 x batch_size (no gradients to store)."""
    num_workers: int | Literal["auto"] = "auto"
    """DataLoader worker processes (0-64); auto = the CPUs this process may use divided by the devices (one loader
    per device), at most 8 each; 0 on a single CPU."""

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers_in_range(cls, value: Any) -> Any:
        # One check before the union: pydantic would report each member's error (two lines for one mistake).
        if value == "auto":
            return value
        try:
            count = int(value) if not isinstance(value, (bool, float)) else None
        except (TypeError, ValueError):
            count = None
        if count is None or not 0 <= count <= MAX_NUM_WORKERS:
            raise ValueError(f"expected auto or 0-{MAX_NUM_WORKERS} worker processes; got {value!r}")
        return count
    generate: Literal["digits"] | None = None
    """Built-in dataset written to root when root is missing (digits = scikit-learn's 8x8 digits as PNGs)."""
    on_bad_image: Literal["skip", "error"] = "skip"
    """A file that stops decoding mid-run (deleted, truncated after the scan): skip = drop it from its batch and
    list it in <run_dir>/skipped_mid_run.txt (never replaced by another image); error = stop naming the file."""
    balance: Literal["none", "sampler", "loss_weights"] = "none"
    """Class imbalance: sampler = draw training images with replacement so each class is equally likely (seeded;
    multi-label: by each image's rarest label); loss_weights = weight the training loss by n / (C x count_c)
    (scikit-learn's "balanced"; multi-label: each class's positives by negatives / positives); none = as the data
    is. Balanced accuracy and macro-F1 are logged either way (val_balanced_acc, val_macro_f1)."""
    max_bad_fraction: float = Field(default=0.1, ge=0, le=1)
    """Stop when more than this fraction of an epoch's training or validation images fail to decode mid-run (an
    epoch with none at all always stops): a vanished data folder must not train on nothing and report success."""

    @model_validator(mode="after")
    def _labels_match_source(self) -> DataConfig:
        if self.source == "folder" and self.csv != DataConfig.model_fields["csv"].default:
            raise ValueError(f"csv is set ({self.csv!r}) but source is folder; add source: csv to read labels from "
                             "the table, or remove csv")
        if self.source == "folder" and self.multi_label:
            raise ValueError("multi_label: true needs labels from a table (source: csv); class folders give each "
                             "image one label")
        delimiter = self.label_delimiter
        if "," in delimiter or (delimiter != delimiter.strip() and delimiter != " "):  # " ": Kaggle's "a b" tags
            raise ValueError(f"label_delimiter must not contain commas or surrounding spaces (a single space reads "
                             f"space-separated tags); got {delimiter!r} (the default ';' reads a;b)")
        return self

    @model_validator(mode="after")
    def _only_streams_from_object_storage(self) -> DataConfig:
        if "://" in self.root and self.source != "litdata":
            raise ValueError(f"root {self.root!r} is a URL, which only source: litdata reads (a stream written by "
                             "tlkit data optimize); copy the images to a local folder, or write a stream to that "
                             "prefix and add source: litdata")
        return self

    @model_validator(mode="after")
    def _stream_is_written_already(self) -> DataConfig:
        if self.source != "litdata":
            return self
        defaults = DataConfig.model_fields
        fixed = [name for name in ("csv", "columns", "exclude", "relabel", "multi_label", "generate", "val_fraction",
                                   "test_fraction") if getattr(self, name) != defaults[name].default]
        if fixed:
            raise ValueError(f"{', '.join(fixed)} cannot apply to source: litdata (the stream's images, labels and "
                             f"split were fixed by tlkit data optimize); remove {'them' if len(fixed) > 1 else 'it'}, "
                             "or pass the matching option to tlkit data optimize and write the stream again")
        if self.balance == "sampler":
            raise ValueError("balance: sampler cannot draw from a stream (LitData reads it in its own order); use "
                             "balance: loss_weights with source: litdata")
        return self

    @model_validator(mode="after")
    def _fractions_leave_training_images(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be below 1 to leave training images; got "
                             f"{self.val_fraction} + {self.test_fraction}")
        return self


class ColorJitter(Section):
    p: float = Field(default=0.0, ge=0, le=1)
    """Probability of jittering an image; 0 = off."""
    brightness: float = Field(default=0.2, ge=0)
    """Brightness factor drawn from [1 - b, 1 + b]."""
    contrast: float = Field(default=0.2, ge=0)
    """Contrast factor drawn from [1 - c, 1 + c]."""
    saturation: float = Field(default=0.2, ge=0)
    """Saturation factor drawn from [1 - s, 1 + s]."""
    hue: float = Field(default=0.02, ge=0, le=0.5)
    """Hue shift drawn from [-h, h] (fraction of the colour wheel); keep small, hue carries class signal."""


class Cutout(Section):
    p: float = Field(default=0.0, ge=0, le=1)
    """Probability of masking an image; 0 = off."""
    holes: tuple[int, int] = (1, 1)
    """Number of masked rectangles, drawn from [min, max]."""
    size: tuple[float, float] = (0.1, 0.3)
    """Side of each rectangle as a fraction of the image side, drawn from [min, max]."""
    fill: float = 0.0
    """Pixel value (0-255) written into the holes before normalisation; 0 = black as in DeVries & Taylor 2017."""


class Rotate(Section):
    p: float = Field(default=0.0, ge=0, le=1)
    """Probability of a small rotation; 0 = off."""
    degrees: float = Field(default=10.0, ge=0, le=180)
    """Rotation angle drawn from [-degrees, degrees]."""


class Distortion(Section):
    p: float = Field(default=0.0, ge=0, le=1)
    """Probability of optical (lens) distortion; 0 = off."""
    limit: float = Field(default=0.1, ge=0, le=1)
    """Distortion strength drawn from [-limit, limit]."""


PRESET_NAMES = ("none", "light", "medium", "heavy")
# Each preset is a complete set of explicit values; `tlkit recipe show` prints them and any field can be overridden.
PRESETS: dict[str, dict[str, Any]] = {
    # Deterministic: the eval geometry, nothing random (a feature cache can reuse it).
    "none": {"crop": "center", "hflip": 0.0},
    # Small-data transfer default: mild scale-crop and mirror only.
    "light": {"crop": "random_resized", "crop_scale": (0.35, 1.0), "hflip": 0.5},
    "medium": {
        "crop": "random_resized",
        "crop_scale": (0.25, 1.0),
        "hflip": 0.5,
        "jitter": {"p": 0.8, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02},
        "cutout": {"p": 0.25, "holes": (1, 1), "size": (0.1, 0.25)},
    },
    "heavy": {
        "crop": "random_resized",
        "crop_scale": (0.08, 1.0),
        "hflip": 0.5,
        "jitter": {"p": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.05},
        "grayscale": 0.05,
        "blur": 0.1,
        "rotate": {"p": 0.3, "degrees": 15.0},
        "distortion": {"p": 0.2, "limit": 0.1},
        "cutout": {"p": 0.5, "holes": (1, 2), "size": (0.1, 0.3)},
    },
}


class TrainAugment(Section):
    """Training-time augmentation. The eval transform is untouched by all of this."""

    preset: Literal["none", "light", "medium", "heavy"] = "light"
    """Starting values (none = deterministic eval geometry; light = scale-crop + flip; medium adds jitter and
    Cutout; heavy adds rotation, blur, grey, lens distortion); fields set here override the preset's."""
    crop: Literal["random_resized", "short_side", "center"] = "random_resized"
    """random_resized (Inception style), short_side (ResNet: short side uniform in short_side, random crop), or
    center (eval geometry, no randomness)."""
    crop_scale: tuple[float, float] = (0.35, 1.0)
    """random_resized: area range as a fraction of the image; 0.35+ keeps the object in view on small data."""
    crop_ratio: tuple[float, float] = (0.75, 1.3333333333333333)
    """random_resized: aspect-ratio range."""
    short_side: tuple[int, int] | None = None
    """short_side: [min, max] short-side length before the crop; null = input_size x [256, 480] / 224."""
    hflip: float = Field(default=0.5, ge=0, le=1)
    """Horizontal flip probability; 0 for data where mirroring changes the label (digits, text)."""
    vflip: float = Field(default=0.0, ge=0, le=1)
    """Vertical flip probability; off because most photos have an up (fine for microscopy, satellite)."""
    jitter: ColorJitter = ColorJitter()
    """Colour jitter (brightness, contrast, saturation, hue)."""
    grayscale: float = Field(default=0.0, ge=0, le=1)
    """Probability of converting to grey (3 channels kept)."""
    blur: float = Field(default=0.0, ge=0, le=1)
    """Probability of a Gaussian blur (sigma 0.1-2)."""
    rotate: Rotate = Rotate()
    """Small rotations."""
    distortion: Distortion = Distortion()
    """Optical (lens) distortion."""
    cutout: Cutout = Cutout()
    """Cutout: mask random rectangles."""

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"preset": data}
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "light")
        if preset not in PRESETS:
            return data  # the Literal check reports it with the choices
        return _merge(PRESETS[preset], data)

    @model_validator(mode="after")
    def _ranges_ordered(self) -> TrainAugment:
        for name in ("crop_scale", "crop_ratio", "short_side"):
            value = getattr(self, name)
            if value is not None and value[0] > value[1]:
                raise ValueError(f"{name} must be [min, max] with min <= max; got {list(value)}")
        holes, size = self.cutout.holes, self.cutout.size
        if holes[0] < 1 or holes[0] > holes[1]:
            raise ValueError(f"cutout.holes must be [min, max] with 1 <= min <= max; got {list(holes)}")
        if not 0 < size[0] <= size[1] <= 1:
            raise ValueError(f"cutout.size must be [min, max] fractions with 0 < min <= max <= 1; got {list(size)}")
        if not 0 < self.crop_scale[0] <= 1 or self.crop_scale[1] > 1:
            raise ValueError(f"crop_scale values must lie in (0, 1]; got {list(self.crop_scale)}")
        return self

    @property
    def is_deterministic(self) -> bool:
        """True when the training input never varies (no random crop, flip or pixel change)."""
        probabilities = (self.hflip, self.vflip, self.jitter.p, self.grayscale, self.blur, self.rotate.p,
                         self.distortion.p, self.cutout.p)
        return self.crop == "center" and not any(probabilities)


def _merge(base: dict, override: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class CacheConfig(Section):
    features: bool = True
    """linear_probe: extract the frozen backbone's features once and train the head on them (same loss, optimizer,
    schedule); finetune_top: the frozen prefix's activations likewise, the top groups + head trained on them;
    false = run the backbone over every image every epoch."""
    views: int = Field(default=1, ge=1, le=64)
    """Augmented views cached per training image when augmentation is random; each epoch draws one per image.
    Each view costs one backbone forward per image. Deterministic input (augment: none) always uses 1."""
    disk: bool = True
    """Keep features on disk between runs, keyed by backbone, weights, preprocessing, view and file identity."""
    dir: str | None = None
    """Cache folder; null = $TLKIT_CACHE/features, else ~/.cache/tlkit/features."""
    max_gb: float = Field(default=4.0, gt=0)
    """strategy finetune_top: refuse to cache the frozen prefix's activations (float16 on disk; training reads them
    a batch at a time) when they would exceed this many GB; the size is logged before anything is computed."""
