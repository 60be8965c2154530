enum PlaceholderAdmin {}
