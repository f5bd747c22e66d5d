"""unetr: UNETR 3D CT multi-organ segmentation (BTCV) as one command-line tool."""

__version__ = "0.1.0"
