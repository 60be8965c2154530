enum PlaceholderClusterMetadata {}
