"""Static files of the player page (a package so that setuptools ships them)."""
