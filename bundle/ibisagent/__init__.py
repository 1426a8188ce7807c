"""ibisagent: agentic medical image segmentation (IBISAgent) for clinical deployment."""

__version__ = "0.1.0"
