"""What the commands share: the usage error, reading the data, and the provenance a command
records with the files it writes (the command line as typed, the data's sha256, a model saved
with its provenance and the same provenance in a .json beside it)."""
import json
from pathlib import Path

from .. import checkpoint
from ..data import load_cifar10
from ..files import atomic_write, sha256_file


class UsageError(Exception):
    """A command line that asks for something that cannot be: reported in one line on stderr
    with exit status 2, as argparse reports a flag it does not know."""


def _data(path, verbose=True):
    return load_cifar10(path, verbose=verbose)


def _command(args):
    """The command line as typed, for a file's provenance (``main(argv)`` records ``argv``)."""
    return "python -m leanformer " + " ".join(args.argv)


def _data_sha256(path):
    """sha256 of the data file a command read, for its provenance (None for a folder or none)."""
    return sha256_file(path) if path and Path(path).is_file() else None


def _save_with_json(model, path, provenance):
    """Save ``model`` with ``provenance`` to ``path`` and the same provenance, with the weights'
    sha256, to the .json beside it (readable without Python). Returns the sha256."""
    path = Path(path)
    sha = checkpoint.save_model(model, path, provenance)
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(
        json.dumps({**provenance, "weights_sha256": sha}, indent=1) + "\n"))
    return sha
