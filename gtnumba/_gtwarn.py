"""Warnings for GT code that gtnumba accepts but would not write itself, at most once per call site.

The call site is the first frame outside the gtnumba package (the user's line), so a training loop
that repeats the same call warns once, whatever Python's warning filters say.
"""
import os
import sys
import warnings

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_SEEN = set()


class GTCompatWarning(UserWarning):
    """GT code that runs, but differently from how gtnumba (and PyTorch) would have it written."""


def _user_frame():
    frame, depth = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, depth = frame.f_back, depth + 1
    return frame, depth


def warn_once(message):
    frame, depth = _user_frame()
    site = (frame.f_code.co_filename, frame.f_lineno) if frame is not None else ("?", 0)
    if site in _SEEN:
        return
    _SEEN.add(site)
    warnings.warn(message, GTCompatWarning, stacklevel=depth)
