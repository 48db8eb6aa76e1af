"""One Beam step per module: listing, details, upload and row writing."""
