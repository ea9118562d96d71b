"""Templates of the player page (a package so that setuptools ships its files)."""
