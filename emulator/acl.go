package emulator

import "strings"

// Accounts share one mochi broker, so every topic and filter a device sends
// is moved into its account's namespace ($acct/<account>/<topic>) on the way
// in and taken out on the way out: a message published in one account never
// matches a subscription, or replaces a retained message, of another. Client
// IDs are namespaced the same way (account/clientID), so a device of one
// account cannot take over another account's session.

const nsRoot = "$acct/"

func topicNS(account string) string { return nsRoot + account + "/" }

// toBroker moves a topic name or filter into an account's namespace; a shared
// subscription keeps its $share/<group>/ in front.
func toBroker(account, topic string) string {
	if topic == "" {
		return ""
	}
	if rest, ok := strings.CutPrefix(topic, "$share/"); ok {
		if group, filter, found := strings.Cut(rest, "/"); found {
			return "$share/" + group + "/" + topicNS(account) + filter
		}
	}
	return topicNS(account) + topic
}

// fromBroker is the inverse of toBroker; ok is false for a topic outside the
// account's namespace (none should reach a device).
func fromBroker(account, topic string) (string, bool) {
	if rest, ok := strings.CutPrefix(topic, "$share/"); ok {
		if group, filter, found := strings.Cut(rest, "/"); found {
			if f, ok := strings.CutPrefix(filter, topicNS(account)); ok {
				return "$share/" + group + "/" + f, true
			}
		}
		return topic, false
	}
	return strings.CutPrefix(topic, topicNS(account))
}

func clientNS(account, clientID string) string { return account + "/" + clientID }

// reservedPublish says why AWS IoT refuses a device's PUBLISH to a reserved
// topic whatever its policies allow ("" when it does not): topics starting
// with $ belong to AWS IoT, and a device may publish only the requests of its
// APIs there, never the replies and notifications AWS IoT itself publishes
// (…/accepted, …/rejected, Jobs notify and notify-next, shadow
// delta/documents, $aws/events).
func reservedPublish(topic string) string {
	if !strings.HasPrefix(topic, "$") {
		return ""
	}
	if !strings.HasPrefix(topic, "$aws/") {
		return "topics starting with $ are reserved for AWS IoT; a device cannot publish to " + topic
	}
	levels := strings.Split(topic, "/")
	last := levels[len(levels)-1]
	switch {
	case levels[1] == "events":
		return "AWS IoT publishes the $aws/events topics; devices may only subscribe to them"
	case last == "accepted" || last == "rejected" || last == "delta" || last == "documents":
		return "AWS IoT publishes the replies on …/" + last + "; a device publishes the request topic and subscribes to this one"
	case len(levels) == 5 && levels[1] == "things" && levels[3] == "jobs" && (last == "notify" || last == "notify-next"):
		return "AWS IoT publishes Jobs notifications on " + last + "; devices may only subscribe to it"
	}
	return ""
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
