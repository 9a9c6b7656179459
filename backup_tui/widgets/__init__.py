"""Widgets: they display what a screen hands them and decide nothing."""
