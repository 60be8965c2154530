enum PlaceholderShardBankConfig {}
