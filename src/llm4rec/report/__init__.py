"""The `report` rules: summary tables, paired tests, figures, the bias heatmap and provenance."""
