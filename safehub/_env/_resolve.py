"""Turn a hubconf ``dependencies`` list into what to install (pure, no I/O).

hubconf lists *import* names (torch.hub checks them with ``find_spec``). Each
entry may carry a PEP 508 version specifier (``"numpy>=1.20"``). The list comes
from a stranger's file, so every entry is validated strictly: a dotted name made
of identifiers (or a plain distribution name), an optional specifier, nothing
else. URLs, markers, extras and anything unparsable are refused.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence

from .._errors import EnvironmentBuildError, escape_untrusted
from .._records import record

__all__ = [
    "Resolution",
    "Requirement",
    "resolve_dependencies",
    "parse_entry",
    "TORCH_FAMILY",
    "IMPORT_TO_DIST",
    "KNOWN_DISTS",
    "canonical",
]

MAX_ENTRIES = 256
MAX_ENTRY_CHARS = 200

# Distributions that are tied to the host's torch build. They are never
# installed into a venv; the host provides them read-only (canonical names).
TORCH_FAMILY: frozenset[str] = frozenset(
    {
        "torch",
        "torchvision",
        "torchaudio",
        "torchtext",
        "torchdata",
        "torcharrow",
        "torchrec",
        "torchcsprng",
        "torch-tensorrt",
        "functorch",
        "triton",
        "pytorch-triton",
    }
)

# Import name (dotted prefixes allowed) -> PyPI distribution. Names not listed
# install the distribution of the same name, which is right for most packages.
IMPORT_TO_DIST: dict[str, str] = {
    # torch family (import name differs from the canonical dist name)
    "torch_tensorrt": "torch-tensorrt",
    "pytorch": "torch",  # the PyPI "pytorch" project is a stub that fails on purpose
    # import name != distribution name
    "yaml": "PyYAML",
    "PIL": "pillow",
    "cv2": "opencv-python-headless",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "skvideo": "scikit-video",
    "hydra": "hydra-core",
    "google.protobuf": "protobuf",
    "attr": "attrs",
    "Crypto": "pycryptodome",
    "Cryptodome": "pycryptodomex",
    "dateutil": "python-dateutil",
    "bs4": "beautifulsoup4",
    "fitz": "PyMuPDF",
    "magic": "python-magic",
    "jwt": "PyJWT",
    "dotenv": "python-dotenv",
    "docx": "python-docx",
    "pptx": "python-pptx",
    "git": "GitPython",
    "OpenSSL": "pyOpenSSL",
    "serial": "pyserial",
    "usb": "pyusb",
    "zmq": "pyzmq",
    "faiss": "faiss-cpu",
    "osgeo": "GDAL",
    "absl": "absl-py",
    "grpc": "grpcio",
    "ruamel.yaml": "ruamel.yaml",
    "Bio": "biopython",
    "IPython": "ipython",
    "pkg_resources": "setuptools",
    "pyximport": "Cython",
    "mpl_toolkits": "matplotlib",
    "antlr4": "antlr4-python3-runtime",
    "open_clip": "open-clip-torch",
    "whisper": "openai-whisper",
    "Levenshtein": "levenshtein",
    "mmseg": "mmsegmentation",
    "mmdet": "mmdet",
    "ml_collections": "ml-collections",
    "msgpack_numpy": "msgpack-numpy",
    "sentencepiece": "sentencepiece",
    "lightning_fabric": "lightning-fabric",
    "pytorch_lightning": "pytorch-lightning",
    "segmentation_models_pytorch": "segmentation-models-pytorch",
    "efficientnet_pytorch": "efficientnet-pytorch",
    "face_alignment": "face-alignment",
    "tensorboardX": "tensorboardX",
    "huggingface_hub": "huggingface-hub",
    "typing_extensions": "typing-extensions",
    "more_itertools": "more-itertools",
    "opt_einsum": "opt-einsum",
    "pytorch_msssim": "pytorch-msssim",
    "jinja2": "Jinja2",
    "markupsafe": "MarkupSafe",
    "pygments": "Pygments",
    "websocket": "websocket-client",
    "editdistance": "editdistance",
    "imageio_ffmpeg": "imageio-ffmpeg",
    "soundfile": "soundfile",
    "av": "av",
    "lmdb": "lmdb",
    "wandb": "wandb",
    # More import != distribution pairs seen in hub repos. Sources: pipreqs' mapping file
    # (github.com/bndr/pipreqs, pipreqs/mapping), each checked against the package's PyPI page.
    "OpenGL": "PyOpenGL",
    "Stemmer": "PyStemmer",
    "dns": "dnspython",
    "elftools": "pyelftools",
    "enchant": "pyenchant",
    "ephem": "pyephem",
    "decouple": "python-decouple",
    "google.cloud.storage": "google-cloud-storage",
    "googleapiclient": "google-api-python-client",
    "apiclient": "google-api-python-client",
    "mmcv": "mmcv",
    "mmengine": "mmengine",
    "detectron2": "detectron2",
    "pycocotools": "pycocotools",
    "lpips": "lpips",
    "kornia": "kornia",
    "nltk": "nltk",
    "prefetch_generator": "prefetch-generator",
    "pretrainedmodels": "pretrainedmodels",
    "fairscale": "fairscale",
    "ultralytics": "ultralytics",
    "gdown": "gdown",
    "torchmetrics": "torchmetrics",
    "transformers": "transformers",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
    "accelerate": "accelerate",
    "diffusers": "diffusers",
    "timm": "timm",
    "einops": "einops",
    "fvcore": "fvcore",
    "iopath": "iopath",
    "yacs": "yacs",
    "omegaconf": "omegaconf",
    "termcolor": "termcolor",
    "tabulate": "tabulate",
    "librosa": "librosa",
    "resampy": "resampy",
    "pydub": "pydub",
    "matplotlib": "matplotlib",
    "seaborn": "seaborn",
    "pandas": "pandas",
    "numpy": "numpy",
    "scipy": "scipy",
    "numba": "numba",
    "h5py": "h5py",
    "tqdm": "tqdm",
    "requests": "requests",
    "regex": "regex",
    "ftfy": "ftfy",
    "imageio": "imageio",
    "albumentations": "albumentations",
    "shapely": "shapely",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "tensorboard": "tensorboard",
    "thop": "thop",
    "ptflops": "ptflops",
    "easydict": "easydict",
    "addict": "addict",
    "munch": "munch",
    "gin": "gin-config",
    "jsonargparse": "jsonargparse",
    "lightning": "lightning",
    "jax": "jax",
    "flax": "flax",
    "tensorflow": "tensorflow",
    "keras": "keras",
    "dlib": "dlib",
    "kaldiio": "kaldiio",
    "webrtcvad": "webrtcvad",
    "pyworld": "pyworld",
    "unidecode": "Unidecode",
    "inflect": "inflect",
    "jieba": "jieba",
    "pypinyin": "pypinyin",
    "spacy": "spacy",
    "sacremoses": "sacremoses",
    "fairseq": "fairseq",
    "rich": "rich",
    "click": "click",
    "packaging": "packaging",
    "filelock": "filelock",
    "psutil": "psutil",
    "six": "six",
    "toml": "toml",
    "tomli": "tomli",
    "simplejson": "simplejson",
    "ujson": "ujson",
    "orjson": "orjson",
    "cloudpickle": "cloudpickle",
    "dill": "dill",
    "joblib": "joblib",
    "natsort": "natsort",
    "pyquaternion": "pyquaternion",
    "trimesh": "trimesh",
    "open3d": "open3d",
    "plyfile": "plyfile",
    "imgaug": "imgaug",
    "wget": "wget",
    "boto3": "boto3",
    "botocore": "botocore",
    "sympy": "sympy",
    "networkx": "networkx",
    "fsspec": "fsspec",
    "mpmath": "mpmath",
    "sentence_transformers": "sentence-transformers",
    "torch_geometric": "torch-geometric",
    "torch_scatter": "torch-scatter",
    "torch_sparse": "torch-sparse",
    "pytorchvideo": "pytorchvideo",
    "torchcrf": "pytorch-crf",
    "pytorch_pretrained_bert": "pytorch-pretrained-bert",
    "pytorch_transformers": "pytorch-transformers",
    "pl_bolts": "lightning-bolts",
    "ruamel": "ruamel.yaml",
    "zstandard": "zstandard",
    "xxhash": "xxhash",
}

# Distributions whose import name is their own name, known to be the real project
# (not a squat of a popular import). An import name the scan finds must be here or
# in IMPORT_TO_DIST; anything else is reported, never guessed. Canonical names.
KNOWN_DISTS: frozenset[str] = frozenset(canonical_name for canonical_name in (
    "numpy", "scipy", "pandas", "matplotlib", "seaborn", "tqdm", "requests", "regex", "einops", "timm",
    "omegaconf", "fvcore", "iopath", "yacs", "gdown", "torchmetrics", "librosa", "transformers", "tokenizers",
    "safetensors", "accelerate", "diffusers", "kornia", "lpips", "nltk", "h5py", "numba", "imageio", "ftfy",
    "albumentations", "shapely", "onnx", "onnxruntime", "tensorboard", "thop", "ptflops", "easydict", "addict",
    "munch", "jsonargparse", "lightning", "termcolor", "tabulate", "resampy", "pydub", "six", "toml", "tomli",
    "simplejson", "ujson", "orjson", "cloudpickle", "dill", "joblib", "natsort", "trimesh", "open3d", "plyfile",
    "imgaug", "boto3", "botocore", "rich", "click", "packaging", "filelock", "psutil", "pycocotools", "mmcv",
    "mmengine", "fairscale", "ultralytics", "pretrainedmodels", "inflect", "jieba", "pypinyin", "spacy",
    "sacremoses", "fairseq", "pytorchvideo", "kaldiio", "webrtcvad", "pyworld", "pyquaternion", "wget",
    "sympy", "networkx", "fsspec", "mpmath", "zstandard", "xxhash", "editdistance", "soundfile", "av", "lmdb",
    "wandb", "sentencepiece", "tensorboardx", "jinja2", "markupsafe", "pygments", "cython", "protobuf", "attrs",
    "pillow", "lxml", "pyyaml", "jax", "flax", "tensorflow", "keras", "dlib", "faiss-cpu", "opencv-python",
    "opencv-python-headless", "scikit-learn", "scikit-image", "hydra-core", "absl-py", "ml-collections",
)) | frozenset(re.sub(r"[-_.]+", "-", d).lower() for d in IMPORT_TO_DIST.values())

# An import name: identifiers joined by dots. A distribution name (PEP 508)
# may also use '-', so "scikit-learn" is accepted and used as is.
_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:[.\-][A-Za-z0-9_]+)*"
_ENTRY = re.compile(rf"^\s*(?P<name>{_NAME})\s*(?P<spec>[<>=!~][^;@\[\]\\]*)?\s*$")
_SPEC_CHARS = re.compile(r"^[A-Za-z0-9.*+!<>=~, ]*$")
_DIST_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")  # PEP 508


def canonical(name: str) -> str:
    """PEP 503 normalisation: case and runs of ``-_.`` do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


@record(frozen=True)
class Requirement:
    """One validated hubconf entry."""

    entry: str  # the import (or distribution) name as written, without specifier
    distribution: str  # PyPI distribution name
    specifier: str = ""  # normalised PEP 440 specifier set, "" for any version

    def __str__(self) -> str:
        return f"{self.distribution}{self.specifier}"


@record(frozen=True)
class Resolution:
    """What a dependency list means for the env.

    ``install``: requirements for the installer (sorted, one per distribution).
    ``host``: torch-family requirements the host must satisfy (never installed).
    ``skipped``: standard-library names, which need nothing.
    """

    install: tuple[Requirement, ...] = ()
    host: tuple[Requirement, ...] = ()
    skipped: tuple[str, ...] = ()

    @property
    def install_lines(self) -> tuple[str, ...]:
        return tuple(str(r) for r in self.install)

    @property
    def host_lines(self) -> tuple[str, ...]:
        return tuple(str(r) for r in self.host)


def _bad(entry: object, why: str) -> EnvironmentBuildError:
    shown = escape_untrusted(repr(entry), limit=120)
    return EnvironmentBuildError(
        f"hubconf dependency {shown} is not acceptable: {why}",
        hint="dependencies must be import names such as 'yaml' or 'PIL', optionally with a "
        "version specifier such as 'numpy>=1.20'; ask the repo owner to fix hubconf.py",
    )


def parse_entry(entry: object) -> tuple[str, str]:
    """Validate one entry; return (name, normalised specifier)."""
    if not isinstance(entry, str):
        raise _bad(entry, "it is not a string")
    if len(entry) > MAX_ENTRY_CHARS:
        raise _bad(entry[:60] + "...", f"it is longer than {MAX_ENTRY_CHARS} characters")
    m = _ENTRY.match(entry)
    if m is None:
        raise _bad(entry, "only a name and an optional version specifier are allowed (no URLs, extras or markers)")
    name, spec = m.group("name"), (m.group("spec") or "").strip()
    if spec:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet  # (a bare name needs none of it)

        if not _SPEC_CHARS.match(spec):
            raise _bad(entry, "the version specifier has characters a specifier never uses")
        try:
            spec_set = SpecifierSet(spec)
        except InvalidSpecifier:
            raise _bad(entry, "the version specifier is not valid PEP 440") from None
        if any(s.operator == "===" for s in spec_set):
            # Arbitrary equality compares raw strings: nothing a hubconf needs, and it lets
            # any text that is not a version through to the installer's requirements file.
            raise _bad(entry, "arbitrary equality ('===') is not allowed; use '==' with a PEP 440 version")
        spec = ",".join(sorted(str(s) for s in spec_set))
    return name, spec


def _distribution_for(name: str) -> str:
    if "-" in name:
        return name  # already a distribution name
    parts = name.split(".")
    # longest dotted prefix in the table wins ("google.protobuf.text_format")
    for i in range(len(parts), 0, -1):
        hit = IMPORT_TO_DIST.get(".".join(parts[:i]))
        if hit is not None:
            return hit
    return parts[0]


def _merge(a: str, b: str) -> str:
    specs = {s for s in (a.split(",") + b.split(",")) if s}
    return ",".join(sorted(specs))


def resolve_dependencies(
    dependencies: Sequence[str] | Iterable[str] | None,
    *,
    stdlib_names: Iterable[str] | None = None,
) -> Resolution:
    """Map hubconf import names to distributions. Pure: touches neither disk nor network.

    Raises EnvironmentBuildError for any malformed entry.
    """
    if isinstance(dependencies, (str, bytes)):
        raise _bad(dependencies, "dependencies must be a list of strings, not one string")
    entries = [] if dependencies is None else list(dependencies)  # hubconf without the variable
    if len(entries) > MAX_ENTRIES:
        raise EnvironmentBuildError(
            f"hubconf lists {len(entries)} dependencies; at most {MAX_ENTRIES} are accepted",
            hint="this repo's hubconf.py is unusual; inspect it before trusting it",
        )
    stdlib = frozenset(sys.stdlib_module_names if stdlib_names is None else stdlib_names)
    install: dict[str, Requirement] = {}
    host: dict[str, Requirement] = {}
    skipped: set[str] = set()
    for entry in entries:
        name, spec = parse_entry(entry)
        top = name.split(".")[0]
        if "-" not in name and top in stdlib and canonical(top) not in TORCH_FAMILY:
            skipped.add(top)
            continue
        dist = _distribution_for(name)
        if not _DIST_NAME.match(dist):
            raise _bad(entry, f"{dist!r} cannot be a package name (private modules such as '_x' are not installable)")
        key = canonical(dist)
        bucket = host if key in TORCH_FAMILY else install
        if key in TORCH_FAMILY:
            dist = key  # one spelling for host packages
        old = bucket.get(key)
        merged = spec if old is None else _merge(old.specifier, spec)
        bucket[key] = Requirement(entry=name if old is None else old.entry, distribution=dist, specifier=merged)
    return Resolution(
        install=tuple(install[k] for k in sorted(install)),
        host=tuple(host[k] for k in sorted(host)),
        skipped=tuple(sorted(skipped)),
    )
