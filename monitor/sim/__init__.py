"""Simulators: Discord (REST + gateway) and the CDP emulator."""
