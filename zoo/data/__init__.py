"""Dataset layer: adapters (readers) → manifest (one schema) → fixed splits → decoded-image cache."""
