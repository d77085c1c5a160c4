"""Ray Data graphs composing operators and storage."""
