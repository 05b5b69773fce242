//! The tokens of the small query languages the fakes parse (JQL, Drive's `q`): words, quoted
//! strings (single or double quotes, backslash escapes), comparison operators, parentheses and,
//! where the language has them, commas.

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Token {
    Word(String),
    Quoted(String),
    Operator(String),
    Open,
    Close,
    Comma,
}

impl Token {
    /// The token as written, for error messages.
    pub(crate) fn text(&self) -> String {
        match self {
            Token::Word(text) | Token::Quoted(text) | Token::Operator(text) => text.clone(),
            Token::Open => "(".into(),
            Token::Close => ")".into(),
            Token::Comma => ",".into(),
        }
    }

    pub(crate) fn is_word(&self, word: &str) -> bool {
        matches!(self, Token::Word(text) if text.eq_ignore_ascii_case(word))
    }
}

/// The language's punctuation: the characters that start an operator (a following `=` joins
/// it), and whether `,` separates.
pub(crate) struct Punctuation {
    pub operators: &'static str,
    pub commas: bool,
}

/// `text` as tokens; `None` when a quoted string is not closed.
pub(crate) fn tokens(text: &str, punctuation: &Punctuation) -> Option<Vec<Token>> {
    let separates = |c: char| {
        c.is_whitespace()
            || "()'\"".contains(c)
            || punctuation.operators.contains(c)
            || (punctuation.commas && c == ',')
    };
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' || c == '"' {
            chars.next();
            let mut quoted = String::new();
            loop {
                match chars.next()? {
                    '\\' => quoted.push(chars.next()?),
                    end if end == c => break,
                    other => quoted.push(other),
                }
            }
            tokens.push(Token::Quoted(quoted));
        } else if c == '(' || c == ')' || (punctuation.commas && c == ',') {
            chars.next();
            tokens.push(match c {
                '(' => Token::Open,
                ')' => Token::Close,
                _ => Token::Comma,
            });
        } else if punctuation.operators.contains(c) {
            let mut op = String::from(c);
            chars.next();
            if chars.peek() == Some(&'=') {
                op.push('=');
                chars.next();
            }
            tokens.push(Token::Operator(op));
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if separates(c) {
                    break;
                }
                word.push(c);
                chars.next();
            }
            tokens.push(Token::Word(word));
        }
    }
    Some(tokens)
}
