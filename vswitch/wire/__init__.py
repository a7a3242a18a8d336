"""Wire formats: header declarations (construct), address helpers, and the packet text syntax."""
