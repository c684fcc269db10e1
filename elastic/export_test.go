package elastic

// SetCorrupt installs a hook that may damage each state slice a donor
// serves (tests only).
func SetCorrupt(c *Config, f func(joiner string, slice int, b []byte)) { c.corrupt = f }
