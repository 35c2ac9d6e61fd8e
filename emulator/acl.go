package emulator

import "strings"

// The emulator's one topic policy, in place of AWS IoT policies: a device may
// use ordinary topics freely, its own thing's reserved topics
// ($aws/things/<client ID>/...), and the fleet-provisioning API, whose replies
// go only to the connection that asked. Everything else under $ is refused,
// so no device can read another thing's job documents or new certificates.

// aclAllows reports whether a client may publish to a topic (write) or
// subscribe to a filter / receive on a topic (!write).
func aclAllows(clientID, topic string, write bool) bool {
	if rest, ok := strings.CutPrefix(topic, "$share/"); ok {
		// $share/<group>/<filter>: the filter is what matters.
		_, filter, found := strings.Cut(rest, "/")
		if !found {
			return false
		}
		topic = filter
	}
	if !strings.HasPrefix(topic, "$") {
		return true
	}
	levels := strings.Split(topic, "/")
	last := levels[len(levels)-1]
	isReply := last == "accepted" || last == "rejected"
	switch {
	case len(levels) >= 3 && levels[0] == "$aws" && levels[1] == "things":
		// A client ID of "+" or "#" must not turn into a wildcard over
		// every thing.
		if levels[2] != clientID || levels[2] == "+" || levels[2] == "#" {
			return false
		}
		if write && (isReply || (len(levels) == 5 && levels[3] == "jobs" && (last == "notify" || last == "notify-next"))) {
			return false
		}
		return true
	case len(levels) >= 2 && levels[0] == "$aws" && (levels[1] == "certificates" || levels[1] == "provisioning-templates"):
		return !(write && isReply)
	case len(levels) >= 3 && levels[0] == "$aws" && levels[1] == "events" && (levels[2] == "job" || levels[2] == "jobExecution"):
		// Jobs events (when enabled) are for the account's cloud-side
		// programs to read; only the emulator publishes them.
		return !write
	}
	return false
}

// topicMatches reports whether an MQTT topic filter matches a topic name.
func topicMatches(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	f, t := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, level := range f {
		if level == "#" {
			return true
		}
		if i >= len(t) {
			return false
		}
		if level != "+" && level != t[i] {
			return false
		}
	}
	return len(f) == len(t)
}
