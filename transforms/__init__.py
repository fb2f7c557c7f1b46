"""Reusable Beam transforms: each module does one job and is tested alone."""

from transforms.emulators import use_emulators

use_emulators()
