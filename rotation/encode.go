package rotation

import (
	"encoding/json"
)

// encodeState is the state file's text: the state indented as
// json.MarshalIndent does, but with each journal entry compact on a line of
// its own. The journal is most of the file (up to 100 entries) and indenting
// it was most of a save's time; a line per entry reads as well. Any JSON
// reader (decodeState, jq) reads it the same.
func encodeState(st *State) ([]byte, error) {
	head := *st
	head.Journal = nil
	data, err := json.MarshalIndent(&head, "", "  ")
	if err != nil {
		return nil, err
	}
	if len(st.Journal) == 0 {
		return append(data, '\n'), nil
	}
	// data ends with "\n}": the journal goes in before it, last as in State.
	buf := make([]byte, 0, len(data)+len(st.Journal)*160)
	buf = append(buf, data[:len(data)-2]...)
	buf = append(buf, ",\n  \"journal\": ["...)
	for i, e := range st.Journal {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, "\n    "...)
		if buf, err = e.appendJSON(buf); err != nil {
			return nil, err
		}
	}
	return append(buf, "\n  ]\n}\n"...), nil
}

// appendJSON appends e as json.Marshal encodes it, without reflection.
func (e Entry) appendJSON(b []byte) ([]byte, error) {
	at, err := e.At.MarshalJSON()
	if err != nil {
		return nil, err
	}
	b = append(b, `{"at":`...)
	b = append(b, at...)
	b = append(b, `,"from":`...)
	b = appendJSONString(b, string(e.From))
	b = append(b, `,"to":`...)
	b = appendJSONString(b, string(e.To))
	b = append(b, `,"event":`...)
	b = appendJSONString(b, string(e.Event))
	if e.Note != "" {
		b = append(b, `,"note":`...)
		b = appendJSONString(b, e.Note)
	}
	return append(b, '}'), nil
}

// appendJSONString appends s quoted as encoding/json quotes it: printable
// ASCII other than the characters it escapes is copied; anything else goes
// through encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
