"""What runs got wrong: interpretation, matplotlib plots, report.html."""
