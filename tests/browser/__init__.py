"""Browser tests (Playwright + Debian Chromium) and frontend bundle checks."""
