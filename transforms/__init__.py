"""Reusable Beam transforms: each module does one job and is tested alone."""

from transforms.emulators import use_anonymous_gcs_credentials_for_emulator

use_anonymous_gcs_credentials_for_emulator()
