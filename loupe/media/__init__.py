"""Files to pixels: scanning folders, decoding safely, drawing boxes."""
