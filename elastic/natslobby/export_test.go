package natslobby

// OnHeard sets a hook called after each announcement is listed.
func OnHeard(l *Lobby, f func(id string)) {
	l.mu.Lock()
	l.heard = f
	l.mu.Unlock()
}
