"""Developer tools for the local loop: emulators and a sample publisher."""
