"""Segmentation tools: encode an image once, then predict a mask per click step."""
