"""Model versions: manifest, signing, encryption, packaging."""
