"""Image handling shared by every tool and policy: reading, windowing, model input, overlays."""
