"""Command-line helpers every ``fastsample`` command uses: one-line argparse errors, argument types, error lines."""

from __future__ import annotations

import argparse


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``PROG: error: MESSAGE (see PROG --help)``, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def device(text: str):
    """argparse type: a torch device that exists on this machine ('cpu', 'cuda', 'cuda:1', 'mps', ...)."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"not a device: {text!r} ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine")
    return dev


def error_line(err: BaseException) -> str:
    """One line for an error: its message, prefixed by its type unless it is an input error."""
    from ._io import UserError

    msg = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (UserError, ValueError, OSError, KeyError, ImportError)):
        return msg
    return f"{type(err).__name__}: {msg} (rerun with --debug for the traceback)"
