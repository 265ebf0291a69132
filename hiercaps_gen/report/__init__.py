"""The HTML report over a release."""
