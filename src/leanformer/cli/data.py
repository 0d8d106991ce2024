"""The command that writes a data file: ``make-subset`` (the shipped CIFAR-10 subset, derived
from a class-folder .tar.gz)."""
import argparse

from ..data import make_subset


def cmd_make_subset(args: argparse.Namespace) -> None:
    sha = make_subset(args.source, args.dest, per_class=args.per_class, seed=args.seed)
    print(f"wrote {args.dest}  sha256 {sha}")
