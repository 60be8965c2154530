enum PlaceholderBankSchema {}
