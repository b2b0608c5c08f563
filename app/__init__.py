"""Stateful interactive 3D medical image segmentation service.

Importing ``app`` must stay cheap: no torch, no model, no I/O. Only the version lives here.
"""

__version__ = "0.1.0"
